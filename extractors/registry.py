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
from collections.abc import Callable, Iterable, Mapping
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
    #: option -> value -> D, for an option that sets the output width (CLIP's ``output``);
    #: its keys are the option's only values. Not part of any store key: config() holds out_shape.
    out_dims: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: option -> value -> weights entry, for an option that picks other weights (CLAP's
    #: ``checkpoint``); values not listed use ``weights``. Lets checks and provenance name the
    #: file a request loads without importing the family's module.
    option_weights: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

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
#: name prefix -> what follows it, in words, for messages (``<model_name>``, ``<repo>``).
_RESOLVER_ARGS: dict[str, str] = {}
#: name prefix -> the members ``extractors list`` shows as rows (hf_audio's known repos).
_LISTED: dict[str, Callable[[], Iterable[str]]] = {}
#: another spelling -> registered name (``hf_audio:MIT/ast-...`` -> ``hf_audio:MIT--ast-...``).
_ALIASES: dict[str, str] = {}


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
    for option, dims in spec.out_dims.items():
        if dims.get(spec.options.get(option)) != spec.out_dim:
            raise ValueError(f"{spec.name}: expected out_dims[{option!r}] to map the default "
                             f"{spec.options.get(option)!r} to out_dim {spec.out_dim} but got {dict(dims)}")


def out_dim(spec: ExtractorSpec, options: Mapping[str, Any]) -> int:
    """D for resolved ``options``: ``spec.out_dim`` unless an ``out_dims`` option picks another width.

    A value outside an ``out_dims`` table is refused here, so a spec's table is also the
    option's list of choices.
    """
    dim = spec.out_dim
    for option, dims in spec.out_dims.items():
        value = options.get(option, spec.options.get(option))
        if value not in dims:
            raise AvvpError(f"Option {option!r} of extractor {spec.name!r}: expected one of "
                            f"{', '.join(map(str, dims))} but got {value!r}")
        dim = int(dims[value])
    return dim


def register_resolver(prefix: str, resolver: Callable[[str], None], what: str = "<model_name>",
                      listed: Callable[[], Iterable[str]] | None = None) -> None:
    """Names starting with ``prefix`` are registered on first use by ``resolver(name)``.

    A family whose members are open-ended (every timm model) cannot list them at import
    time; its resolver builds the spec from the library's config and calls :func:`register`.
    ``what`` names the rest of the name in messages (``timm:<model_name>``, ``hf_audio:<repo>``);
    ``listed()`` gives the members worth a row in ``extractors list`` (none for timm).
    """
    _RESOLVERS[prefix] = resolver
    _RESOLVER_ARGS[prefix] = what
    if listed is not None:
        _LISTED[prefix] = listed


def register_alias(alias: str, name: str) -> None:
    """``alias`` asks for the registered ``name`` (a spelling a store folder cannot hold)."""
    if name not in REGISTRY:
        raise ValueError(f"Alias {alias!r}: expected a registered name but got {name!r}")
    _ALIASES[alias] = name


def listed_names() -> list[str]:
    """What ``extractors list`` shows: every registered name plus the listed members of resolver
    families, resolved (so registered) here; not what a bare ``extract`` runs (sorted(REGISTRY))."""
    for listed in _LISTED.values():
        for name in listed():
            get_spec(name)
    return sorted(REGISTRY)


def resolver_names() -> list[str]:
    """The open-ended name patterns, e.g. ``['hf_audio:<repo>', 'timm:<model_name>']``."""
    return [f"{prefix}{_RESOLVER_ARGS.get(prefix, '<model_name>')}" for prefix in sorted(_RESOLVERS)]


def get_spec(name: str) -> ExtractorSpec:
    """The spec registered as ``name`` (or resolved by a prefix); an unknown name lists the known ones.

    A request ``name[key=value,...]`` gives :func:`request_spec`'s spec (what those options
    compute), so ``extractors show clip_vit_b16[output=pre_projection]`` shows its width.
    """
    if "[" in name:
        return request_spec(name)
    if name not in REGISTRY and name not in _ALIASES:
        for prefix, resolver in _RESOLVERS.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                resolver(name)  # registers it, or raises an AvvpError naming the problem
                break
    try:
        return REGISTRY[_ALIASES.get(name, name)]
    except KeyError:
        known = ", ".join(sorted(REGISTRY) + resolver_names()) or "(none registered)"
        raise AvvpError(f"Unknown extractor {name!r}; expected one of: {known}") from None


def request_spec(text: str) -> ExtractorSpec:
    """The spec of request ``name[key=value,...]``: options resolved and the shape they give.

    ``options`` then holds the chosen values (defaults filled in), ``out_dim`` follows an
    ``out_dims`` option and ``out_frames`` the ``fps`` of a 2D extractor (10 at 1 fps). It is
    a view for ``extractors show`` and imports, never registered: stores are keyed by the
    built extractor's config(), not by this.
    """
    from dataclasses import replace

    from avvp_pipe.extractors.base import DECODED_FPS, resolve_options

    name, options = parse_request(text)
    spec = get_spec(name)
    resolved = resolve_options(spec, options)
    fps = resolved.get("fps", DECODED_FPS) if "fps" not in spec.options else DECODED_FPS
    return replace(spec, options=resolved, out_dim=out_dim(spec, resolved), weights=weights_entry(spec, resolved),
                   out_frames=spec.out_frames * int(fps) // DECODED_FPS)


def weights_entry(spec: ExtractorSpec, options: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights entry ``options`` load: an ``option_weights`` pick, else ``spec.weights``."""
    for option, table in spec.option_weights.items():
        value = options.get(option, spec.options.get(option))
        if value in table:
            return table[value]
    return spec.weights


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
    extractor = _BUILDERS[spec.name](spec, device=dev, weights_dir=wdir, random_init=random_init, **resolved)
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
    spec = get_spec(name)
    missing = missing_packages(spec)
    status, path = _locate(spec.weights, weights_dir)
    result: dict[str, Any] = {
        "packages": not missing,
        "missing_packages": missing,
        "weights": status,
        "weights_path": str(path),
    }
    extra = {key: dict(zip(("weights", "weights_path"), map(str, _locate(entry, weights_dir))))
             for key, entry in dict(spec.weights.get("extra", {})).items()}
    if extra:
        result["extra_weights"] = extra
    return result


def _locate(entry: Mapping[str, Any], weights_dir: str | Path | None) -> tuple[str, Path | str]:
    """(status, path) of one weights entry: a Hugging Face hub file in the HF cache, else torch hub's."""
    if entry.get("source") == "hf_hub":
        from avvp_pipe.extractors import hub

        return hub.locate(entry, weights_dir)
    from avvp_pipe.extractors import weights

    return weights.locate(entry, weights_dir)


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
