"""``openl3_image[fps=1]``: one frame a second (decoded frames round(linspace(0, 79, 10))),
like every other 2D extractor. The kept frames, their embeddings, the shapes, the store
key (new at 1 fps, unchanged at 8) and the real extract path. CPU, random init, no network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import avvp_pipe.extractors  # noqa: F401  (registers the families)
from avvp_pipe.extractors import openl3, preprocess, registry
from tests.test_extractors import make_clip

pytestmark = pytest.mark.filterwarnings("ignore::avvp_pipe.cache.store.UnrealFeaturesWarning")
#: openl3_image's store key at default options (random init, fp32, float32), recorded before
#: it took the fps option: stores written then must still be found.
DEFAULT_KEY = "f14a5f96236b5abf"
_BUILT: dict[tuple, object] = {}


def built(**options):
    key = tuple(sorted(options.items()))
    if key not in _BUILT:
        _BUILT[key] = registry.create("openl3_image", random_init=True, **options)
    return _BUILT[key]


def test_one_fps_embeds_the_kept_frames_as_eight_fps_does():
    eight, one = built(), built(fps=1)
    clip = make_clip(seed=2)
    kept = preprocess.frame_positions(1)  # [0, 9, 18, 26, 35, 44, 53, 61, 70, 79]
    items = one.prepare(clip)
    assert tuple(items.shape) == (10, 3, 224, 224) and one.items_per_clip == 10
    frames = torch.from_numpy(clip.frames[kept]).permute(0, 3, 1, 2)
    torch.testing.assert_close(items, openl3.preprocess_frames(frames), rtol=0, atol=0)
    all_items = eight.prepare(clip)  # (80, 3, 224, 224)
    torch.testing.assert_close(items, all_items[torch.from_numpy(kept)], rtol=0, atol=0)
    pick = [1, 7]  # decoded frames 9 and 61: a wrong frame rule picks other images
    torch.testing.assert_close(one.embed(items[pick]), eight.embed(all_items[kept[pick]]), rtol=0, atol=0)
    rows = one.embed(items[:2])[torch.arange(10) % 2]
    assert one.finalize(rows).shape == one.out_shape == (10, 512)


def test_shapes_and_store_keys():
    from avvp_pipe.cache.store import store_key
    from avvp_pipe.pipeline.extract.plan import store_config

    eight, one = built(), built(fps=1)
    assert "fps" not in eight.config() and eight.out_shape == (80, 512)
    assert store_key(store_config(eight, "fp32"), "float32") == DEFAULT_KEY
    cfg = one.config()
    assert cfg["fps"] == 1 and cfg["out_shape"] == [10, 512] and "[0, 9, 18, 26" in cfg["sampling"]
    assert store_key(store_config(one, "fp32"), "float32") != DEFAULT_KEY
    assert built(fps=1, embedding_size=8192).out_shape == (10, 8192)
    assert registry.get_spec("openl3_image[fps=1]").out_frames == 10
    audio = registry.create("openl3_audio", random_init=True)
    assert audio.out_shape == (10, 512)  # the audio net's per-second windows are not frames
    with pytest.raises(Exception, match="Unknown option 'fps' for extractor 'openl3_audio'"):
        registry.create("openl3_audio", random_init=True, fps=1)


def test_one_fps_through_the_real_extract_path(tmp_path):
    from avvp_pipe.cache.store import list_stores
    from avvp_pipe.pipeline.extract import ExtractOptions, find_clips, run_extract
    from tests import clips

    videos = tmp_path / "s" / "videos"
    videos.mkdir(parents=True)
    clips.make_clip(videos / "clip0000000.mp4", seed=0)
    opts = ExtractOptions(extractors=("openl3_image[fps=1]",), random_init=True, batch_size=10)
    summary = run_extract(videos, tmp_path / "cache", find_clips(videos), opts, progress=False)
    assert summary["failures"] == [] and summary["per_extractor"]["openl3_image[fps=1]"]["done"] == 1
    (store,) = list_stores(str(tmp_path / "cache"))
    assert store.extractor == "openl3_image" and tuple(store.shape) == (10, 512) and store.config["fps"] == 1
    feats = store.read(["clip0000000"])
    assert feats.shape == (1, 10, 512) and np.isfinite(feats).all()
