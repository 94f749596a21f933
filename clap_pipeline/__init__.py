"""clap-pipeline: fine-tune LAION CLAP on the Free Music Archive for text-to-music search."""

__version__ = "0.1.0"
