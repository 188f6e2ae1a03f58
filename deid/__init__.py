"""deid: de-identify faces in drone footage with adversarial examples."""

import os as _os

__version__ = "0.1.0"

# Transparent huge pages for PyTorch's large CPU tensors (c10's allocator reads this variable:
# blocks of 2 MB and more are aligned to 2 MB and madvise'd MADV_HUGEPAGE). MTCNN's pyramid on
# an enlarged batch of frames allocates tensors of 40 MB to 2.6 GB per layer, each a fresh mmap
# whose 4 KB pages fault in one by one; with huge pages a ReLU over one was about 4x faster and
# detection 9-13% faster on this project's CPU (README, Speed). Where the kernel has THP off,
# nothing changes; a value the user set (0 turns it off) is kept.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
