"""The tiny VLM loads through the generic transformers classes real checkpoints use, and answers."""

import numpy as np
from PIL import Image


def test_tiny_vlm_loads_with_auto_classes_and_generates(tiny_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tiny_models["vlm_qwen2_5_vl"]
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    image = Image.fromarray((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "List the sounds."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|image_pad|>" in prompt
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    # 120x160 is resized to a multiple of 28 (112x168): (112/14)*(168/14)/4 merged patches.
    assert image_tokens == (112 // 14) * (168 // 14) // 4
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert (
        generated.shape[1] == inputs["input_ids"].shape[1] + 8
        or generated[0, -1] == model.config.text_config.eos_token_id
    )


def test_tiny_ast_loads_with_auto_classes_and_embeds_a_mix_whatever_its_batch(tiny_models):
    from transformers import ASTModel, AutoFeatureExtractor

    from stages.embed.ast_audio import TransformersAst

    folder = tiny_models["ast"]
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert type(extractor).__name__ == "ASTFeatureExtractor" and extractor.sampling_rate == 16000
    assert type(ASTModel.from_pretrained(folder)).__name__ == "ASTModel"
    rng = np.random.default_rng(0)
    mixes = [(rng.standard_normal(80000) * scale).astype(np.float32) for scale in (0.05, 0.2, 0.5)]
    # A 5 s mix fills the model's 512 frames without being cut.
    assert extractor(mixes[:1], sampling_rate=16000, return_tensors="np")["input_values"].shape == (1, 512, 64)
    model = TransformersAst(folder)
    together = model.embed_audio(mixes)
    assert together.shape == (3, model.dim) == (3, 32)
    alone = np.stack([model.embed_audio([m])[0] for m in mixes])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
