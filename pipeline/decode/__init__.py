"""Decoding a clip into what the extractors see: the official 80 frames and 16/48 kHz audio."""

from avvp_pipe.pipeline.decode.audio import AUDIO_PATHS, DEFAULT_AUDIO_PATH
from avvp_pipe.pipeline.decode.clip import (AUDIO_RATES, DEFAULT_FRAME_RULE, FRAME_RULES, DecodedClip, decode_clip,
                                            official_frame_indices, save_npz, shutdown_worker)

__all__ = ["AUDIO_PATHS", "AUDIO_RATES", "DEFAULT_AUDIO_PATH", "DEFAULT_FRAME_RULE", "FRAME_RULES", "DecodedClip",
           "decode_clip", "official_frame_indices", "save_npz", "shutdown_worker"]
