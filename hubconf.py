"""torch.hub entry points of ignore-attn: the paper's networks with any attention spec.

    import torch
    model = torch.hub.load("ignore-attn/ignore-attn", "resnet50_cifar", attention="se-ign3", num_classes=10)
    model = torch.hub.load("ignore-attn/ignore-attn", "resnet50", attention="cbam-ign1(0.5)",
                           weights="exports/in-r50/model.safetensors")    # your own weights: a file or a URL
    model = torch.hub.load("ignore-attn/ignore-attn", "from_export", path="exports/my-run")

No weights are published with the library: `weights=None` (the default) gives the authors' initialisation, and
`weights=` takes a .safetensors or .pt state dict, as a local path or a URL you give (downloaded once into
torch.hub's cache, under a hash of the URL; end the URL in #sha256=<hex digest> to have the file checked).
Written by hand (not from a notebook): torch.hub reads this file from the repository root; every public callable
here is an entry point (`torch.hub.list`), so helpers start with an underscore. The entry points are made from the
model registry (`ignore_attn.registry.model_entries`): one per listed model, with the registration's default
attention, classes and description, so a backbone registered in its notebook is here too.
"""
dependencies = ["torch", "torchvision"]   # what building the models needs; .safetensors files also need safetensors


def _load_weights(model, weights, progress: bool):
    "Load `weights` (a path, or an http(s):// or file:// URL of a .safetensors / .pt file) into `model`."
    from pathlib import Path
    from urllib.parse import urlparse
    from ignore_attn.export import load_weights
    text = str(weights)
    if urlparse(text).scheme not in ("http", "https", "file"): return load_weights(model, Path(weights).expanduser())
    return load_weights(model, _download(text, progress))


def _download(url: str, progress: bool):
    """The file at `url` in torch.hub's cache, downloaded once; `url#sha256=<64 hex digits>` is checked against that hash.

    The cached name starts with a hash of the URL: every export is called model.safetensors, and two URLs of one
    name must never share a cached file. A hash given is checked on the download and again on every later use."""
    import hashlib, os, re
    from pathlib import Path
    from urllib.parse import urldefrag, urlparse
    import torch
    from ignore_attn.export import _sha256
    base, fragment = urldefrag(url)
    want = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment) if fragment else None
    if fragment and want is None:
        raise ValueError(f"the URL {url} ends in #{fragment}; the only fragment read is #sha256=<the file's 64 hex "
                         "digits SHA-256>: correct it, or drop it")
    want = want[1].lower() if want else None
    name = os.path.basename(urlparse(base).path) or "weights"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / f"{hashlib.sha256(base.encode()).hexdigest()[:16]}-{name}"
    if cached.is_file() and (want is None or _sha256(cached) == want): return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_name(f".{cached.name}.{os.getpid()}.part")   # renamed only once complete and checked
    try:
        torch.hub.download_url_to_file(base, str(part), progress=progress)
        got = _sha256(part)
        if want is not None and got != want:
            raise ValueError(f"the file at {base} has SHA-256 {got}, not the {want} its URL asks for: it is not the "
                             "file meant (changed or replaced); nothing was loaded or kept")
        os.replace(part, cached)
    finally:
        part.unlink(missing_ok=True)
    return cached


def _build(arch: str, num_classes: int, attention: str, weights, progress: bool = True, **kwargs):
    "get_model(arch, num_classes, attention, **kwargs), then the weights if any are given."
    from ignore_attn.models import get_model
    model = get_model(arch, num_classes=num_classes, attention=attention, **kwargs)
    return model if weights is None else _load_weights(model, weights, progress)


_ARGS = """
    attention: attention spec in every block: 'standard' (none), 'se', 'se-ign1(0.5)', 'se-ign2', 'se-ign3',
        'cbam', 'cbam-ign1(0.8)', ... (see ignore_attn.flip.SPEC_HELP)
    num_classes: outputs of the classifier
    weights: None (fresh, the authors' initialisation) or a .safetensors / .pt state dict: a path or a URL
        (a URL ending in #sha256=<64 hex digits> is checked against that hash)
    progress: show a progress bar while downloading a URL
    **kwargs: further options of the model (see ignore_attn.models)
"""


def _entry(name: str, attention: str, num_classes: int, doc: str):
    "The entry point of registered model `name`: its defaults and description come from its registration."
    def entry(attention=attention, num_classes=num_classes, weights=None, progress=True, **kwargs):
        return _build(name, num_classes, attention, weights, progress, **kwargs)
    entry.__name__ = entry.__qualname__ = name.replace("-", "_")
    entry.__doc__ = doc + "\n" + _ARGS
    return entry


def _entries() -> dict:
    "One entry point per model name the registry lists (resnet50-cifar -> resnet50_cifar), so a new backbone needs no edit here."
    from ignore_attn.registry import model_entries
    return {n.replace("-", "_"): _entry(n, e.attention, e.num_classes, e.describe(n)) for n, e in model_entries("all").items()}


globals().update(_entries())


def from_export(path, device="cpu"):
    """A model exported by `ignore-attn export RUN_DIR` (model.safetensors + config.json), rebuilt and loaded.

    path: the export folder (or its config.json / model.safetensors)
    device: where the model goes; it comes back in eval mode
    """
    from ignore_attn.export import load_exported
    return load_exported(path, device=device)
