"""Per-generation caches of image work that GRPO repeats: preprocessing and (frozen) vision-encoder features.

GRPO repeats each prompt ``num_generations`` times and TRL preprocesses the generation batch's images twice (once
to generate, once for the log-prob forwards), then every log-prob forward runs the vision encoder again. With a
frozen vision tower all of that is a function of the pixels alone, so each distinct image is processed once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn


def _image_key(image) -> tuple:
    if hasattr(image, "tobytes"):
        data = image.tobytes()
        shape = (getattr(image, "mode", None), getattr(image, "size", None), getattr(image, "shape", None))
    else:
        arr = torch.as_tensor(image).contiguous()
        data, shape = arr.numpy().tobytes(), (str(arr.dtype), tuple(arr.shape))
    return (shape, hashlib.blake2b(data, digest_size=16).hexdigest())


class _ProcessorProxy:
    """An image processor's proxy that keeps its outputs by input (``calls``: calls made; ``processed``: inputs
    the wrapped processor actually ran on; ``prefetched``: inputs taken from an ``ImagePrefetcher``)."""

    def __init__(self, base, prefetcher: ImagePrefetcher | None = None, device=None):
        self._base = base
        self._store: dict = {}
        self._prefetcher = prefetcher
        self._device = None if device is None else torch.device(device)
        self._fingerprints: dict = {}  # id(image) -> (image, fingerprint): one hash per image object and batch
        self.calls = 0
        self.processed = 0
        self.prefetched = 0

    def __getattr__(self, name):
        return getattr(self._base, name)

    def _call_options(self, kwargs: dict) -> tuple[dict, str]:
        """Counts a call; the kwargs passed on (the output is torch either way) and their key for the store."""
        self.calls += 1
        kwargs = {k: v for k, v in kwargs.items() if k != "return_tensors"}
        opts = repr(sorted((k, repr(v)) for k, v in kwargs.items()))
        if self._prefetcher is not None:
            self._prefetcher.configure(type(self), self._base, kwargs, opts)
        return kwargs, opts

    def _stored(self, key):
        """The entry for ``key``: this batch's store, else the prefetcher's (waits for it), else ``None``."""
        if key not in self._store and self._prefetcher is not None:
            entry = self._prefetcher.take(key)
            if entry is not None:
                self._store[key] = self._place(entry)
                self.prefetched += 1
        return self._store.get(key)

    def _place(self, entry):
        """An entry as this batch keeps it: as made here (``ImageProcessorCache`` puts its pixels on ``device``;
        the Idefics3 cache keeps them on the host, where it re-pads its batches)."""
        return entry

    def _image_key(self, image) -> tuple:
        """``_image_key(image)``, computed once per image object in this batch (GRPO passes each image object
        ``num_generations`` times, and TRL processes the batch twice; the proxy lives for one batch, so the
        objects it holds cannot be replaced by others at the same address)."""
        hit = self._fingerprints.get(id(image))
        if hit is not None and hit[0] is image:
            return hit[1]
        key = _image_key(image)
        self._fingerprints[id(image)] = (image, key)
        return key


class ImageProcessorCache(_ProcessorProxy):
    """Proxy of a Qwen2-VL image processor that preprocesses each distinct image once (same kwargs).

    With ``device``, each distinct image's pixels are copied there once and a batch's ``pixel_values`` are
    assembled there: GRPO repeats every image ``num_generations`` times and TRL processes the batch twice, so
    the host otherwise concatenates and copies (from pageable memory) every image that many times (64 rollouts of
    480x640 images: twice 0.47 GB per step).
    """

    def __call__(self, images, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature
        from transformers.image_utils import make_flat_list_of_images

        kwargs, opts = self._call_options(kwargs)
        flat = make_flat_list_of_images(images)
        keys = [(self._image_key(img), opts) for img in flat]
        todo = {}
        for img, key in zip(flat, keys, strict=True):
            if self._stored(key) is None and key not in todo:
                todo[key] = img
        if todo:
            entries = self._process(self._base, list(todo.values()), kwargs, list(todo))
            if entries is None:
                return self._base(images, return_tensors="pt", **kwargs)  # a layout this cache does not know
            self._store.update({key: self._place(entry) for key, entry in entries.items()})
            self.processed += len(todo)
        data = {
            "pixel_values": torch.cat([self._store[k][0] for k in keys]),
            "image_grid_thw": torch.stack([self._store[k][1] for k in keys]),
        }
        return BatchFeature(data, tensor_type="pt")

    def _place(self, entry):
        pixels, grid = entry
        if self._device is not None and pixels.device != self._device:
            pixels = pixels.to(self._device)
        return pixels, grid

    @staticmethod
    def _keys(sample: list, opts: str) -> list:
        return [(_image_key(img), opts) for img in sample]

    @staticmethod
    def _process(base, images: list, kwargs: dict, keys: list) -> dict | None:
        """``{key: (pixels, grid)}`` of each image (``None``: an output layout this cache does not know)."""
        out = base(images, return_tensors="pt", **kwargs)
        if set(out.keys()) != {"pixel_values", "image_grid_thw"}:
            return None
        grids = torch.as_tensor(out["image_grid_thw"])
        pixels = torch.as_tensor(out["pixel_values"]).split(grids.prod(-1).tolist())
        return {key: (pix, grid) for key, grid, pix in zip(keys, grids, pixels, strict=True)}


class Idefics3ImageProcessorCache(_ProcessorProxy):
    """Proxy of an Idefics3 (SmolVLM) image processor that preprocesses each distinct sample (its list of images,
    same kwargs) once; batches are re-padded to their largest sample as the processor pads them.

    SmolVLM's processor resizes each image up to a 2048-px longest edge and cuts it into 512-px tiles on the CPU
    (measured on an H100 host: about 1.8 s of a 4-rollout GRPO step, all of it repeated work: TRL processes the
    batch twice and GRPO repeats every prompt ``num_generations`` times). The batch's padded tensors are kept
    for a repeat of the same call (TRL's second pass returns the first pass's tensors, which nothing writes to).
    """

    _last: tuple | None = None

    def __call__(self, images, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature
        from transformers.image_utils import make_nested_list_of_images

        kwargs, opts = self._call_options(kwargs)
        samples = make_nested_list_of_images(images)
        # GRPO passes each image object num_generations times: fingerprint it once (self._image_key)
        keys = [(tuple(self._image_key(img) for img in sample), opts) for sample in samples]
        if self._last is not None and self._last[0] == keys:  # TRL's second pass over the same batch
            return BatchFeature(dict(self._last[1]))
        for sample, key in zip(samples, keys, strict=True):
            if self._stored(key) is not None:
                continue
            entries = self._process(self._base, sample, kwargs, [key])
            if entries is None:
                return self._base(images, return_tensors="pt", **kwargs)  # a layout this cache does not know
            self._store.update(entries)
            self.processed += 1
        entries = [self._store[k] for k in keys]
        if len({(e["pixel_values"].shape, e["pixel_attention_mask"].shape) for e in entries}) == 1:
            pixels = torch.stack([e["pixel_values"] for e in entries])  # no padding: skip the zero fill
            mask = torch.stack([e["pixel_attention_mask"] for e in entries])
        else:
            n = max(e["pixel_values"].shape[0] for e in entries)
            h = max(e["pixel_values"].shape[-2] for e in entries)
            w = max(e["pixel_values"].shape[-1] for e in entries)
            first = entries[0]["pixel_values"]
            pixels = first.new_zeros(len(entries), n, first.shape[1], h, w)
            mask = entries[0]["pixel_attention_mask"].new_zeros(len(entries), n, h, w)
            for i, e in enumerate(entries):
                pv, pm = e["pixel_values"], e["pixel_attention_mask"]
                pixels[i, : pv.shape[0], :, : pv.shape[-2], : pv.shape[-1]] = pv
                mask[i, : pm.shape[0], : pm.shape[-2], : pm.shape[-1]] = pm
        data = {"pixel_values": pixels, "pixel_attention_mask": mask}
        for extra in ("rows", "cols"):
            if extra in entries[0]:
                data[extra] = [list(e[extra]) for e in entries]
        self._last = (keys, data)
        return BatchFeature(dict(data))

    @staticmethod
    def _keys(sample: list, opts: str) -> list:
        return [(tuple(_image_key(img) for img in sample), opts)]

    @staticmethod
    def _process(base, sample: list, kwargs: dict, keys: list) -> dict | None:
        """``{key: features}`` of one sample (its list of images; ``None``: a layout this cache does not know)."""
        out = base([sample], return_tensors="pt", **kwargs)
        if not {"pixel_values", "pixel_attention_mask"} <= set(out.keys()):
            return None
        return {keys[0]: {k: v[0] for k, v in out.items() if k in _IDEFICS3_KEYS}}


_IDEFICS3_KEYS = ("pixel_values", "pixel_attention_mask", "rows", "cols")


class ImagePrefetcher:
    """Preprocesses the images of upcoming samples in a background thread, for the per-generation processor caches
    (``ImageProcessorCache``, ``Idefics3ImageProcessorCache``) to take instead of processing them in the main thread.

    ``submit(images)`` is called with each dataset row's images as the dataloader fetches it (one generation batch
    ahead of the trainer); the processor's kwargs are those of the caches' latest call, so samples seen before the
    first call wait for it. The caches ``take(key)`` an entry (waiting for it; an exception raised in the thread is
    raised there). The result is the wrapped processor's own output for that sample. ``shutdown()`` ends the thread.
    """

    def __init__(self, workers: int = 1, capacity: int = 64):
        self.workers = max(1, int(workers))
        self.capacity = max(1, int(capacity))
        self._executor: ThreadPoolExecutor | None = None
        self._spec: tuple | None = None  # (cache class, base processor, kwargs, opts)
        self._waiting: list[list] = []  # samples submitted before the first call gave the kwargs
        self._futures: OrderedDict = OrderedDict()  # key -> Future of {key: entry}
        self._taken: OrderedDict = OrderedDict()  # keys taken lately (not submitted again)
        self.submitted = 0
        self.taken = 0

    def configure(self, cache_cls: type, base, kwargs: dict, opts: str) -> None:
        """Processor, kwargs and their key as one of the caches just called it; a change drops pending work."""
        spec = (cache_cls, base, kwargs, opts)
        if self._spec is not None and (self._spec[0], self._spec[1], self._spec[3]) == (
            cache_cls,
            base,
            opts,
        ):
            return
        if self._spec is not None:
            self._drop()
        self._spec = spec
        waiting, self._waiting = self._waiting, []
        for sample in waiting:
            self.submit(sample)

    def submit(self, images) -> None:
        """Starts processing one sample's images (a dataset row's) unless it is pending or was taken lately."""
        if not images:
            return
        sample = list(images)
        if self._spec is None:
            self._waiting = [*self._waiting, sample][-self.capacity :]
            return
        cache_cls, base, kwargs, opts = self._spec
        keys = cache_cls._keys(sample, opts)
        if all(k in self._futures or k in self._taken for k in keys):
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="image-prefetch")
        future = self._executor.submit(cache_cls._process, base, sample, kwargs, keys)
        self.submitted += 1
        for k in keys:
            self._futures[k] = future
        while len(self._futures) > self.capacity:
            _, old = self._futures.popitem(last=False)
            if old not in self._futures.values():
                old.cancel()

    def take(self, key):
        """The prefetched entry for ``key`` (waits for it; ``None``: not prefetched or an unknown layout)."""
        future: Future | None = self._futures.pop(key, None)
        if future is None:
            return None
        self._taken[key] = None
        while len(self._taken) > self.capacity:
            self._taken.popitem(last=False)
        entries = future.result()  # re-raises the thread's exception here
        if entries is None or key not in entries:
            return None
        self.taken += 1
        return entries[key]

    def _drop(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._taken.clear()

    def shutdown(self) -> None:
        """Cancels pending work and ends the thread (a later ``submit`` starts a new one)."""
        self._drop()
        self._waiting = []
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class ImageFeatureCache:
    """Memo of ``Qwen2_5_VLModel.get_image_features`` per distinct image, valid while the vision tower is frozen.

    Images are keyed by their grid and a content fingerprint computed on the device (one host sync per call).
    ``clear()`` starts a new generation batch.
    """

    def __init__(self, inner: nn.Module):
        self.inner = inner
        self.original = inner.get_image_features
        self._store: dict = {}
        self._frozen = True
        self._weights: dict = {}
        self.hits = 0
        self.misses = 0
        inner.get_image_features = self

    def clear(self) -> None:
        self._store.clear()
        self._frozen = not any(p.requires_grad for p in self.inner.visual.parameters())

    def _fingerprints(self, chunks: list[torch.Tensor]) -> list[tuple]:
        width = chunks[0].shape[-1]
        dev = chunks[0].device
        if (width, dev) not in self._weights:
            g = torch.Generator().manual_seed(1234)
            self._weights[(width, dev)] = torch.rand(width, generator=g, dtype=torch.float64).to(dev)
        w = self._weights[(width, dev)]
        vals = []
        for c in chunks:
            rows = c.double() @ w
            pos = torch.arange(1, rows.numel() + 1, device=dev, dtype=torch.float64)
            vals.append(torch.stack([rows.sum(), (rows * pos.sqrt()).sum(), c.double().abs().sum()]))
        return [tuple(v) for v in torch.stack(vals).tolist()]

    def __call__(self, pixel_values, image_grid_thw=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if not self._frozen or image_grid_thw is None or kwargs.get("output_hidden_states"):
            return self.original(pixel_values, image_grid_thw, **kwargs)
        chunks = list(pixel_values.split(image_grid_thw.prod(-1).tolist()))
        keys = [
            (tuple(g), fp) for g, fp in zip(image_grid_thw.tolist(), self._fingerprints(chunks), strict=True)
        ]
        miss = [i for i, k in enumerate(keys) if k not in self._store]
        seen = set()
        miss = [i for i in miss if not (keys[i] in seen or seen.add(keys[i]))]
        if miss:
            idx = torch.tensor(miss, device=image_grid_thw.device)
            out = self.original(torch.cat([chunks[i] for i in miss]), image_grid_thw[idx], **kwargs)
            for i, emb in zip(miss, out.pooler_output, strict=True):
                self._store[keys[i]] = emb.detach()
        self.misses += len(miss)
        self.hits += len(keys) - len(miss)
        return BaseModelOutputWithPooling(pooler_output=tuple(self._store[k] for k in keys))
