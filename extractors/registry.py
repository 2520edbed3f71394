"""The extractor registry: each extractor is a spec (plain data) plus a builder.

As in timm's ``default_cfgs``, everything that says what an extractor computes (input
sample rate or image size, mean/std, which layer, which weights file) is data in an
:class:`ExtractorSpec`, so it can be listed, shown, hashed into a cache key and checked
against the source libraries in tests, without building any model. Family modules
(``avvp_pipe.extractors.vggish``, ``avvp_pipe.extractors.imagenet``, ``avvp_pipe.extractors.video3d``, ...) call
:func:`register` at import time; :func:`create` looks the name up and calls the builder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avvp_pipe.core.errors import AvvpError, WeightsError
from avvp_pipe.core.io import jsonable

if TYPE_CHECKING:  # torch stays out of the import path of `avvp-pipe extractors list`
    import torch

    from avvp_pipe.extractors.base import Extractor

MODALITIES = ("audio", "visual-2d", "visual-3d")


@dataclass(frozen=True)
class ExtractorSpec:
    """What an extractor computes, as data. Treat the mappings as read-only."""

    name: str  # registry key, e.g. "resnet152"
    modality: str  # "audio" | "visual-2d" | "visual-3d"
    family: str  # "vggish" | "imagenet" | "video3d" | "openl3"
    out_frames: int  # T per clip: 10 (audio, 3D) or 80 (2D at 8 fps)
    out_dim: int  # D at default options
    input: Mapping[str, Any]  # sample rate / image size, mean, std, interpolation, ...
    weights: Mapping[str, Any]  # library, id, file, url, sha256_prefix
    output_layer: str  # which activation is the feature, in words
    requires: tuple[str, ...]  # importable top-level packages
    licence: str
    options: Mapping[str, Any] = field(default_factory=dict)  # selectable options and defaults
    description: str = ""

    # The mappings are unhashable; identity by name is what a registry needs.
    def __hash__(self) -> int:
        return hash((self.name, self.family))

    def to_dict(self) -> dict[str, Any]:
        """A deep, JSON-friendly copy (tuples become lists) for ``extractors show`` and configs."""
        return jsonable(asdict(self))


#: name -> spec; family modules fill it at import time through :func:`register`.
REGISTRY: dict[str, ExtractorSpec] = {}
_BUILDERS: dict[str, Callable[..., Extractor]] = {}
#: name prefix -> resolver(name) that registers the spec of a name no module listed
#: (``timm:<model_name>``: any timm model, resolved from timm's own config on first use).
_RESOLVERS: dict[str, Callable[[str], None]] = {}


def register(spec: ExtractorSpec, builder: Callable[..., Extractor]) -> None:
    """Add ``spec`` under ``spec.name``; ``builder(spec, *, device, weights_dir, random_init, **options)``.

    Re-registering the same spec (a module reload) is fine; a different spec under a taken
    name is a programming error, because cached features would be keyed ambiguously.
    """
    _check_spec(spec)
    known = REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"Extractor {spec.name!r} is already registered with a different spec")
    REGISTRY[spec.name] = spec
    _BUILDERS[spec.name] = builder


def _check_spec(spec: ExtractorSpec) -> None:
    """Catch malformed specs at import time rather than mid-extraction."""
    if spec.modality not in MODALITIES:
        raise ValueError(f"{spec.name}: expected modality in {MODALITIES} but got {spec.modality!r}")
    if spec.out_frames <= 0 or spec.out_dim <= 0:
        raise ValueError(f"{spec.name}: expected positive out_frames/out_dim but got "
                         f"{spec.out_frames}/{spec.out_dim}")
    if not isinstance(spec.requires, tuple):
        raise ValueError(f"{spec.name}: expected requires to be a tuple but got {type(spec.requires)}")


def register_resolver(prefix: str, resolver: Callable[[str], None]) -> None:
    """Names starting with ``prefix`` are registered on first use by ``resolver(name)``.

    A family whose members are open-ended (every timm model) cannot list them at import
    time; its resolver builds the spec from the library's config and calls :func:`register`.
    """
    _RESOLVERS[prefix] = resolver


def get_spec(name: str) -> ExtractorSpec:
    """The spec registered as ``name`` (or resolved by a prefix); an unknown name lists the known ones."""
    if name not in REGISTRY:
        for prefix, resolver in _RESOLVERS.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                resolver(name)  # registers it, or raises an AvvpError naming the problem
                break
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY) + [f"{p}<model_name>" for p in sorted(_RESOLVERS)]) or "(none registered)"
        raise AvvpError(f"Unknown extractor {name!r}; expected one of: {known}") from None


def parse_request(text: str) -> tuple[str, dict[str, Any]]:
    """``name[key=value,...]`` -> (name, options): how a command line asks for options.

    Values are read as JSON where they parse (``fps=1`` an int, ``normalize=true`` a bool)
    and as strings otherwise (``mode=windows``). ``clip_vit_l14[fps=1]`` and
    ``clap[mode=clip,checkpoint=laion/clap-htsat-unfused]`` are requests; their options
    key the store, so each writes its own.
    """
    import json

    text = text.strip()
    name, bracket, rest = text.partition("[")
    if not bracket:
        return text, {}
    if not rest.endswith("]") or "[" in rest[:-1] or "]" in rest[:-1] or not name:
        raise AvvpError(f"Extractor request {text!r}: expected NAME or NAME[key=value,...]")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest[:-1].split(","))):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise AvvpError(f"Extractor request {text!r}: expected key=value but got {item!r}")
        try:
            value = json.loads(raw.strip())
        except ValueError:
            value = raw.strip()
        options[key.strip()] = value
    return name.strip(), options


def split_requests(text: str) -> list[str]:
    """``a,b[x=1,y=2],c`` -> ``['a', 'b[x=1,y=2]', 'c']``: commas inside brackets stay."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def missing_packages(spec: ExtractorSpec) -> list[str]:
    """Packages in ``spec.requires`` that cannot be imported (checked without importing)."""
    return [pkg for pkg in spec.requires if importlib.util.find_spec(pkg) is None]


def create(
    name: str,
    *,
    device: str | torch.device = "cpu",
    weights_dir: str | Path | None = None,
    random_init: bool = False,
    **options: Any,
) -> Extractor:
    """Build the extractor ``name``: eval mode, on ``device``, pretrained unless ``random_init``.

    ``weights_dir`` is offline mode: the expected weights file must be in that folder and
    nothing is downloaded. Missing packages or weights raise :class:`WeightsError`; there is
    never a silent random initialisation.
    """
    import torch

    from avvp_pipe.extractors.base import Extractor, resolve_options

    spec = get_spec(name)
    missing = missing_packages(spec)
    if missing:
        raise WeightsError(f"Extractor {name!r} needs the Python package(s) {', '.join(missing)}; "
                           f"install them (pip install {' '.join(missing)})")
    resolved = resolve_options(spec, options)
    fps = resolved.pop("fps", None) if "fps" not in spec.options else None  # the base class's option
    dev = _check_device(device)
    wdir = Path(weights_dir).expanduser() if weights_dir is not None else None
    extractor = _BUILDERS[name](spec, device=dev, weights_dir=wdir, random_init=random_init, **resolved)
    if not isinstance(extractor, Extractor):
        raise TypeError(f"Builder for {name!r} returned {type(extractor).__name__}, not an Extractor")
    if fps is not None:
        extractor.use_frame_rate(fps)
    return extractor


def _check_device(device: str | torch.device) -> torch.device:
    """A torch.device, refusing CUDA when this torch cannot use it (clearer than a deep error)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise AvvpError(f"Expected a torch device such as 'cpu' or 'cuda:0' but got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AvvpError(f"Device {device!r} was asked for but torch.cuda.is_available() is False")
    return dev


def availability(name: str, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """Whether ``name`` can be built here: packages importable, weights present/downloadable/missing.

    No extractor package is imported and nothing is downloaded or hashed, so listing every
    extractor stays fast.
    """
    from avvp_pipe.extractors import weights

    spec = get_spec(name)
    missing = missing_packages(spec)
    if spec.weights.get("source") == "hf_hub":  # a Hugging Face hub file: the HF cache, not torch hub's
        from avvp_pipe.extractors import hub

        status, path = hub.locate(spec.weights, weights_dir)
    else:
        status, path = weights.locate(spec.weights, weights_dir)
    result: dict[str, Any] = {
        "packages": not missing,
        "missing_packages": missing,
        "weights": status,
        "weights_path": str(path),
    }
    extra = {key: dict(zip(("weights", "weights_path"), map(str, weights.locate(entry, weights_dir))))
             for key, entry in dict(spec.weights.get("extra", {})).items()}
    if extra:
        result["extra_weights"] = extra
    return result


def input_summary(spec: ExtractorSpec) -> str:
    """A short human reading of ``spec.input``: '16 kHz', '224x224', '112x112 x8'."""
    inp = spec.input
    if "sample_rate" in inp:
        return f"{inp['sample_rate'] / 1000:g} kHz"
    size = inp.get("crop") or inp.get("resize")
    if isinstance(size, (list, tuple)):
        text = "x".join(str(s) for s in size)
    else:
        text = f"{size}x{size}"
    if inp.get("group"):
        text += f" x{inp['group']}"
    return text


def summary(name: str, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """One row of ``avvp-pipe extractors list``: the spec's headline fields and availability."""
    spec = get_spec(name)
    source = (spec.weights.get("repo") if spec.weights.get("source") == "hf_hub" else None) \
        or spec.weights.get("file") or spec.weights.get("id") or "-"
    return {
        "name": spec.name,
        "modality": spec.modality,
        "family": spec.family,
        "out_shape": [spec.out_frames, spec.out_dim],
        "input": input_summary(spec),
        "weights_source": f"{spec.weights.get('library', '?')}: {source}",
        **availability(name, weights_dir),
    }
