"""Decoding a clip into what the extractors see: the official 80 frames and 16/48 kHz audio."""

from avvp_pipe.pipeline.decode.clip import (AUDIO_RATES, DecodedClip, decode_clip, official_frame_indices,
                                            save_npz, shutdown_worker)

__all__ = ["AUDIO_RATES", "DecodedClip", "decode_clip", "official_frame_indices", "save_npz", "shutdown_worker"]
