from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("auxot-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    VERSION = "0+unknown"
