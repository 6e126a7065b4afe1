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
