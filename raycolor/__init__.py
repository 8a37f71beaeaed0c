"""raycolor: colorize black-and-white photos at archive scale (VGG16 U-Net, Ray Train, Ray Data)."""

__version__ = "0.1.0"
