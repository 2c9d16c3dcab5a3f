"""The errors a user can cause (bad data, config, checkpoint, output path), reported without a traceback."""
from __future__ import annotations

from fernoise.checkpoint import CheckpointError
from fernoise.config import ConfigError
from fernoise.data.classes import DataError
from fernoise.distributed import DeviceError
from fernoise.io import OutputError
from fernoise.train import TrainingError

# ValueError and OSError cover argument checks in library code and files the user named;
# FERNOISE_DEBUG=1 shows the traceback anyway.
USER_ERRORS = (DataError, DeviceError, ConfigError, CheckpointError, TrainingError, OutputError, ValueError, OSError)
