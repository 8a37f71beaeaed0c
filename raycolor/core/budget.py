"""What one colorize holds in memory, per image and per call: the numbers the driver plans a run with.

torch-free on purpose: the colorize driver sizes blocks and checks --memory-per-cpu with these, and a driver
that imported raycolor.core.colorize for them would import torch (~2 s of CPU and ~300 MB on every
`raycolor colorize`) without running a model.
"""

# Memory one image holds at full resolution in a decode or finish task, per pixel (bench/big_scans.py measured
# a whole run at 23 B/pixel for an 8-bit scan and 41 for a 16-bit one): what --memory-per-cpu is divided by.
BYTES_PER_PIXEL = {8: 24, 16: 40}

# Most pixels a block of decoded images holds (and so a decode, model or finish call works on) unless a memory
# budget says otherwise (ModelStage.block_pixels): ~50 VGA images, or one 39 MP scan alone. At 2 B/pixel of
# packed L that is a 32 MiB block, a quarter of Ray Data's default; a finish task then holds ~0.4 GB.
BLOCK_PIXELS = 1 << 24

# Most pixels of full-resolution images a model actor holds on its device at once when it decodes JPEGs and
# composes there (GPU mode): ~13 B/pixel (RGB, L, the output), so ~0.9 GB of device memory beside the model.
DEVICE_PIXELS = 1 << 26
