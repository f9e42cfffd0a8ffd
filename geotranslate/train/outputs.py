"""What a run shows and hands on: the panels of a preview and the model file's content."""

from __future__ import annotations

import copy

import torch

from geotranslate.chips.meta import DOMAINS, ChipMeta
from geotranslate.data import ChipDataset
from geotranslate.methods import Method
from geotranslate.modelfile import DomainSpec, TranslationModel
from geotranslate.render import Panel, chip_panel
from geotranslate.stats import Normalizer
from geotranslate.train.config import TrainConfig


def preview_panels(method: Method, item: dict, norm: dict[str, Normalizer], meta: ChipMeta,
                   rgb: dict) -> list[Panel]:
    """Real A, fake B, (reconstructed A,) real B (, fake A, reconstructed B) of a dataset
    item, in data units."""
    a, b = item["a"][None], item["b"][None]
    va, vb = item["valid_a"][0].numpy() > 0, item["valid_b"][0].numpy() > 0

    def panel(title: str, x: torch.Tensor, domain: str, valid) -> Panel:
        return chip_panel(title, norm[domain].from_model(x[0].cpu().numpy()), valid,
                          meta.domains[domain].band_descriptions, rgb[domain])

    translate = method.translate
    fake_b = translate("a2b", a)
    panels = [panel("real A", a, "a", va), panel("fake B", fake_b, "b", va)]
    if "b2a" not in method.directions:
        return [*panels, panel("real B", b, "b", vb)]
    rec_a = translate("b2a", fake_b)
    fake_a = translate("b2a", b)
    rec_b = translate("a2b", fake_a)
    return [*panels, panel("reconstructed A", rec_a, "a", va), panel("real B", b, "b", vb),
            panel("fake A", fake_a, "a", vb), panel("reconstructed B", rec_b, "b", vb)]


def translation_model(config: TrainConfig, method: Method, meta: ChipMeta, train_set: ChipDataset,
                      summary: dict) -> TranslationModel:
    """The model file of ``method``'s generators as they are now (``summary``: its
    ``training`` section)."""
    specs = {}
    for direction, spec in method.generator_specs.items():
        spec = copy.deepcopy(spec)
        if "pretrained" in spec["kwargs"]:
            spec["kwargs"]["pretrained"] = False  # weights come from the model file
        specs[direction] = spec
    return TranslationModel(config.dataset_type, method.generators(), specs,
                            _model_domains(meta, train_set), train_set.crop_size, summary)


def _model_domains(meta: ChipMeta, dataset: ChipDataset) -> dict[str, DomainSpec]:
    out = {}
    for d in DOMAINS:
        dom = meta.domains[d]
        out[d] = DomainSpec(dom.band_count, dom.dtype, list(dom.band_descriptions),
                            dom.nodata, dataset.norm[d],
                            norm_scope=dataset.norm_scope, reference=dataset.reference.get(d),
                            input_transforms=list(dom.input_transforms),
                            composition=list(dom.composition))
    return out
