"""Load models and processors (local directories or hub ids) and build conversational VQA prompts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    ProcessorMixin,
    processing_utils,
)
from transformers.utils import is_torchvision_available
from transformers.video_processing_utils import VideoProcessorMixin

SUPPORTED_ARCHS = ("qwen2_5_vl", "idefics3")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(FileNotFoundError):
    """A model or processor path/id that is neither a local checkpoint nor reachable on the hub."""


class NoVideoProcessor(VideoProcessorMixin):
    """Placeholder video processor for Qwen2.5-VL when torchvision (needed by the real one) is absent.

    Calling it raises; it serialises as the real ``Qwen2VLVideoProcessor`` so saved processors stay loadable.
    """

    def __init__(self, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2, **kwargs):
        super().__init__()
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size

    def preprocess(self, videos, **kwargs):
        """Videos are unsupported here."""
        raise NotImplementedError("video inputs need torchvision, which is not installed")

    def to_dict(self) -> dict:
        """Serialise as the real Qwen2-VL video processor with our patch geometry."""
        return {
            "video_processor_type": "Qwen2VLVideoProcessor",
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
        }


_ARCH_BY_PROCESSOR = {"Qwen2_5_VLProcessor": "qwen2_5_vl", "Idefics3Processor": "idefics3"}
_MARKERS = ("config.json", "processor_config.json", "adapter_config.json")


def _not_found(path_or_id: str) -> ModelNotFoundError:
    if Path(path_or_id).is_dir():
        why = "directory has no " + ", ".join(_MARKERS[:-1]) + " or " + _MARKERS[-1]
    else:
        why = "no such local checkpoint directory, and not available from the Hugging Face hub (offline or unknown id)"
    return ModelNotFoundError(f"model '{path_or_id}' not found: {why}")


def _check_source(path_or_id: str) -> None:
    """Raise ModelNotFoundError for a local directory that is no checkpoint (hub ids are checked on load)."""
    d = Path(path_or_id)
    if d.is_dir() and not any((d / m).is_file() for m in _MARKERS):
        raise _not_found(path_or_id)


def _local_model_type(d: Path) -> str | None:
    """model_type of a local model, processor-only or LoRA-adapter directory."""
    if (d / "config.json").is_file():
        return json.loads((d / "config.json").read_text()).get("model_type")
    if (d / "processor_config.json").is_file():
        cls = json.loads((d / "processor_config.json").read_text()).get("processor_class")
        if cls in _ARCH_BY_PROCESSOR:
            return _ARCH_BY_PROCESSOR[cls]
    if (d / "adapter_config.json").is_file():
        return model_arch(json.loads((d / "adapter_config.json").read_text())["base_model_name_or_path"])
    return None


def load_model(path_or_id: str, *, dtype: str = "float32", device: str | None = None) -> PreTrainedModel:
    """Load an image-text-to-text model from a local checkpoint directory or a hub id.

    Raises ModelNotFoundError (one line) when the path/id is neither a local checkpoint nor on the hub.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    path = str(path_or_id)
    _check_source(path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=_DTYPES[dtype])
    except OSError:
        if Path(path).is_dir():
            raise  # a real checkpoint that failed to load: keep the library's error
        raise _not_found(path) from None
    if device is not None:
        model = model.to(device)
    return model


def make_qwen_processor(image_processor, tokenizer, chat_template: str | None) -> ProcessorMixin:
    """A Qwen2.5-VL processor; without torchvision its video processor is a ``NoVideoProcessor`` placeholder."""
    geometry = dict(
        patch_size=image_processor.patch_size,
        merge_size=image_processor.merge_size,
        temporal_patch_size=image_processor.temporal_patch_size,
    )
    if is_torchvision_available():
        video_processor = transformers.Qwen2VLVideoProcessor(**geometry)
    else:
        if not hasattr(processing_utils.transformers_module, "VideoProcessorMixin"):
            # ProcessorMixin resolves the expected video-processor base class by name from the top-level
            # module, which only exports it when torchvision is installed.
            processing_utils.transformers_module.VideoProcessorMixin = VideoProcessorMixin
        video_processor = NoVideoProcessor(**geometry)
    return transformers.Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


def _processor_without_video(path: str) -> ProcessorMixin:
    """Load a Qwen2.5-VL processor's parts (PIL image processor) and assemble it (:func:`make_qwen_processor`:
    a placeholder video processor without torchvision, transformers' own with it)."""
    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = Path(path, "chat_template.jinja")
    chat_template = template.read_text() if template.is_file() else getattr(tokenizer, "chat_template", None)
    return make_qwen_processor(image_processor, tokenizer, chat_template)


def load_processor(path_or_id: str, *, padding_side: str = "left") -> ProcessorMixin:
    """Load the processor of a checkpoint (PIL image processors) and set its tokenizer's padding side."""
    path = str(path_or_id)
    arch = model_arch(path)  # raises ModelNotFoundError for unknown paths/ids
    try:
        if arch == "qwen2_5_vl" and not is_torchvision_available():
            processor = _processor_without_video(path)
        else:
            try:
                processor = AutoProcessor.from_pretrained(path, backend="pil")
            except ImportError:
                # transformers >= 5.23 with torchvision: Qwen2-VL's video processor has no "pil" backend
                # ("Video processor cannot be loaded - requested pil backend is not available"), so the
                # processor is assembled from its parts (PIL images, torchvision video processor)
                if arch != "qwen2_5_vl":
                    raise
                processor = _processor_without_video(path)
    except OSError:
        if Path(path).is_dir():
            raise
        raise _not_found(path) from None
    processor.tokenizer.padding_side = padding_side
    return processor


def model_arch(path_or_id_or_model) -> str:
    """Architecture ("qwen2_5_vl" | "idefics3") from ``model_type``.

    Accepts a model, a config, a hub id, or a local model / processor-only / LoRA-adapter directory.
    """
    obj = path_or_id_or_model
    if isinstance(obj, (str, Path)):
        _check_source(str(obj))
        if Path(obj).is_dir():
            model_type = _local_model_type(Path(obj))
        else:
            try:
                model_type = AutoConfig.from_pretrained(str(obj)).model_type
            except OSError:
                raise _not_found(str(obj)) from None
    else:
        config = getattr(obj, "config", obj)
        model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHS:
        raise ValueError(f"unsupported model_type {model_type!r}; expected one of {SUPPORTED_ARCHS}")
    return model_type


def build_messages(problem: str, system_prompt: str | None = None, with_image: bool = True) -> list[dict]:
    """Conversational prompt: optional system turn, then a user turn with an image slot and the problem text."""
    messages: list[dict] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    content: list[dict] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": problem})
    messages.append({"role": "user", "content": content})
    return messages
