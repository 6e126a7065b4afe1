"""Tunables in one place, so tests and benchmarks can change them.

``CHUNK_ELEMENTS`` takes effect when an optimizer binds to its parameters (its first
``apply_gradients``), not in the middle of a run; the CUDA launch settings are read at
every launch.
"""

#: Elements per unit of CPU work. A step splits every tensor into chunks of at most this
#: many elements and hands the chunks of all tensors to the threads at once, so one kernel
#: call serves any number of tensors. The global norm sums each chunk separately and then
#: adds the chunk sums in a fixed order: its result depends on this value, never on the
#: number of threads.
CHUNK_ELEMENTS = 1 << 15

#: Threads per block for the CUDA kernels.
CUDA_THREADS_PER_BLOCK = 256

#: Blocks per multiprocessor at most, for the CUDA kernels. A kernel launches one block per
#: chunk up to this many per multiprocessor; the blocks then stride over the remaining
#: chunks. Tests set it low so that tiny arrays exercise the stride.
CUDA_BLOCKS_PER_SM = 32

#: Steps over fewer elements than this (all tensors of the call together) run their CPU
#: kernels on the calling thread. A parallel region costs about 10 us here and far more when
#: another process holds a core it waits for; below two chunks the threads have nothing to
#: share anyway. Measured on a 2-core machine: serial and parallel Adam steps cross near
#: 50,000 float32 elements (``benchmarks/serial_threshold.py``). Results are bitwise the
#: same either way. Read at every step.
PARALLEL_MIN_ELEMENTS = 1 << 16

#: Whether a parallel CPU step chooses its thread count from measured step times
#: (``numbaopt.threads``): all threads on a quiet machine, fewer or one when other work
#: holds the cores and a parallel region would wait for a descheduled thread. False runs
#: every parallel step on all the threads it may use (the cap of ``numbaopt.threads``).
#: Results are bitwise the same either way. Read at every step.
ADAPTIVE_THREADS = True

#: The share of the time that passes which tries of a thread count other than the chosen
#: one may lose (a parallel try on a busy machine can cost 30 times a serial step).
THREADS_PROBE_BUDGET = 0.02

#: Seconds a helper thread watches for the next launch before it sleeps: the launches of a
#: step, and steps in a loop, follow each other closer than that, and a sleeping helper
#: takes tens of microseconds to wake, often too late to share a step of a millisecond.
HELPER_WATCH_SECONDS = 0.5e-3

#: At most this many steps between two tries of each neighbouring thread count: how long a
#: machine that became quiet may wait before its steps use every thread again.
THREADS_PROBE_MAX_STEPS = 512

#: When the chosen thread count's recent steps get this many times slower than its best,
#: the other counts are tried again at once (within the budget).
THREADS_SLOWDOWN = 2.0
