"""VLM answers with transformers: AutoModelForImageTextToText and AutoProcessor (Qwen2.5-VL, LLaVA
and the like), batched, on CPU or GPU. Generation is constrained to the answer's JSON schema with
xgrammar, the structured-output engine vLLM also uses."""

from __future__ import annotations

import json
import logging
from typing import ClassVar

import pyarrow as pa

from schemas import ANSWERS, IMAGES
from schemas.config import PromptConfig, TransformersVlmConfig
from stages.base import Resources, Stage
from stages.errors import error_text
from stages.images.decoding import decode_image, downscale
from stages.io.model_files import stage_model
from stages.vlm.concepts import answer_schema, answers_table, user_message

log = logging.getLogger(__name__)


class TransformersVlm(Stage):
    name: ClassVar[str] = "vlm_transformers"
    required_columns: ClassVar[tuple[str, ...]] = tuple(IMAGES.names)

    def __init__(self, vlm: TransformersVlmConfig, prompt: PromptConfig) -> None:
        self.vlm = vlm
        self.prompt = prompt
        self.model = self.processor = self.grammar = None

    def resources(self) -> Resources:
        return Resources(
            num_cpus=1, num_gpus=self.vlm.num_gpus, actors=self.vlm.concurrency, batch_size=self.vlm.batch_size
        )

    def output_schema(self) -> pa.Schema:
        return ANSWERS

    def setup(self) -> None:
        import torch
        import xgrammar
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        local = stage_model(self.vlm.model)
        self.processor = AutoProcessor.from_pretrained(local)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(local).to(self.device).eval()
        vocab_size = self.model.config.get_text_config().vocab_size
        info = xgrammar.TokenizerInfo.from_huggingface(self.processor.tokenizer, vocab_size=vocab_size)
        self.grammar = xgrammar.GrammarCompiler(info).compile_json_schema(
            json.dumps(answer_schema(self.prompt.max_concepts, self.prompt.max_text_chars)), any_whitespace=False
        )

    def _generate(self, images: list) -> list[str]:
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        text = self.processor.apply_chat_template([user_message(self.prompt.text)], add_generation_prompt=True)
        inputs = self.processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True).to(
            self.device
        )
        sampling = (
            {"do_sample": True, "temperature": self.vlm.temperature}
            if self.vlm.temperature > 0
            else {"do_sample": False}
        )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.prompt.max_new_tokens,
                logits_processor=[LogitsProcessor(self.grammar)],
                **sampling,
            )
        return self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["error"] is None and r["dropped"] is None]
        images = [downscale(decode_image(rows[i]["image_bytes"]).image, self.prompt.max_pixels) for i in todo]
        answers: list[str | None] = [None] * len(rows)
        if todo:
            try:
                for i, answer in zip(todo, self._generate(images)):
                    answers[i] = answer
            except Exception as exc:  # isolate the failing image rather than lose the whole batch
                log.warning("batch of %d failed (%s); retrying one image at a time", len(todo), exc)
                for i, image in zip(todo, images):
                    try:
                        answers[i] = self._generate([image])[0]
                    except Exception as single:
                        reason = f"{self.vlm.name} failed: {type(single).__name__}: {single}"
                        rows[i]["error"] = error_text(rows[i]["uri"], reason, rows[i]["member"])
                        rows[i]["error_kind"], rows[i]["error_stage"] = "vlm_failed", "vlm"
        return answers_table(rows, answers)
