"""Tiny randomly-initialized models of the real architectures, built offline.

Tests and the demo load these through exactly the code that loads real checkpoints, so nothing is
downloaded. Their outputs are meaningless: they exercise shapes, batching and plumbing, not quality.

Layout under the output folder:
    clap-transformers/            ClapModel + ClapProcessor (save_pretrained)
    laion-clap/tiny-htsat.pt      CLAP_Module(amodel=HTSAT-tiny, tmodel=roberta) state dict
    laion-clap/text-backbones/    roberta-base, bert-base-uncased, facebook/bart-base, which
                                  laion-clap loads by name (models.clap.text_backbones_dir)
    clip/                         CLIPModel + CLIPProcessor (save_pretrained), for the mapper and the
                                  clip_image feature
    ast/                          ASTModel + ASTFeatureExtractor (save_pretrained), for the ast feature
    vlm-qwen2_5_vl/               Qwen2.5-VL for AutoModelForImageTextToText + AutoProcessor
    audioldm/                     AudioLDMPipeline (UNet, VAE, CLAP text encoder, RoBERTa tokenizer,
                                  DDIM scheduler, HiFi-GAN vocoder) for `run_pipeline.py generate`
    audioldm2/                    AudioLDM2Pipeline (CLAP and T5 encoders, GPT-2, projection, its
                                  UNet, and the same VAE, scheduler and vocoder)
    timbre/tiny-timbre.ts         a TorchScript timbre model with RAVE's exported interface
                                  (demo.timbre_model), for pool variants
"""

from __future__ import annotations

import json
from pathlib import Path

# A small corpus so the byte-level BPE learns some whole words of the domain.
_CORPUS = """
the sound of a dog barking while running in the grass. rain falling on a tin roof. people talking
in a busy street. a car engine idling. birds chirping in the trees. waves crashing on the beach.
wind blowing through leaves. a baby crying. footsteps on gravel. water flowing in a stream. a bell
ringing. music playing from a radio. a train passing. an airplane flying overhead. a cat meowing.
children laughing at a playground. keyboard typing. a door closing. thunder rumbling. fire crackling.
"""

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TEXT_POSITIONS = 130


def _train_bpe(folder: Path, special_tokens: list[str] = SPECIAL_TOKENS, text: str = _CORPUS) -> Path:
    """vocab.json and merges.txt of a byte-level BPE, the files RoBERTa, BART and Qwen tokenizers load."""
    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text] * 4, vocab_size=700, min_frequency=1, special_tokens=special_tokens)
    bpe.save_model(str(folder))
    return folder


def _spread_weights(model, seed: int) -> None:
    """Re-draw weights at unit-variance scale. Standard initializers (std 0.02) make a random
    network map every input to nearly the same embedding, which would hide bugs in tests."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() >= 2:
                fan_in = weight[0].numel()
                weight.copy_(torch.randn(weight.shape, generator=generator) * fan_in**-0.5)
            elif name.endswith("bias"):
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)


def build_transformers_clap(out: Path, scratch: Path, seed: int = 0, fusion: bool = False) -> Path:
    """A tiny ClapModel with its processor; `fusion` builds a fused checkpoint (feature fusion in the
    audio encoder, and the feature extractor's `fusion` truncation), as larger_clap_general is."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    torch.manual_seed(seed)
    tokenizer = RobertaTokenizer.from_pretrained(str(_train_bpe(scratch / "bpe")))
    config = ClapConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": TEXT_POSITIONS,
            "projection_dim": 512,
        },
        audio_config={
            "patch_embeds_hidden_size": 16,
            "depths": [1, 1],
            "num_attention_heads": [1, 2],
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "projection_dim": 512,
            "enable_fusion": fusion,
        },
        projection_dim=512,
    )
    model = ClapModel(config).eval()
    _spread_weights(model, seed)
    truncation = "fusion" if fusion else "rand_trunc"
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation=truncation), tokenizer=tokenizer)
    target = out / ("clap-transformers-fused" if fusion else "clap-transformers")
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def build_laion_clap(out: Path, scratch: Path, seed: int = 0) -> tuple[Path, Path]:
    """A CLAP_Module checkpoint plus the text backbones laion-clap loads by name.

    laion-clap's text projection expects a 768-wide RoBERTa, so the backbone keeps hidden size 768
    with one layer and a tiny vocabulary.
    """
    import torch
    from transformers import BartTokenizer, BertTokenizer, RobertaConfig, RobertaModel, RobertaTokenizer

    from stages.embed.clap import _working_directory

    torch.manual_seed(seed)
    root = out / "laion-clap"
    backbones = root / "text-backbones"
    bpe = _train_bpe(scratch / "bpe")
    tokenizer = RobertaTokenizer.from_pretrained(str(bpe))
    roberta = RobertaModel(
        RobertaConfig(
            vocab_size=len(tokenizer),
            hidden_size=768,
            num_hidden_layers=1,
            num_attention_heads=12,
            intermediate_size=128,
            max_position_embeddings=TEXT_POSITIONS,
        )
    )
    roberta.save_pretrained(backbones / "roberta-base")
    tokenizer.save_pretrained(backbones / "roberta-base")
    BartTokenizer.from_pretrained(str(bpe)).save_pretrained(backbones / "facebook" / "bart-base")
    words = sorted(set(_CORPUS.replace(".", " ").split()))
    bert = scratch / "bert"
    bert.mkdir(parents=True, exist_ok=True)
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]) + "\n")
    BertTokenizer.from_pretrained(str(bert)).save_pretrained(backbones / "bert-base-uncased")

    with _working_directory(str(backbones)):
        import laion_clap

        module = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny", tmodel="roberta", device="cpu")
    _spread_weights(module.model, seed)
    state = dict(module.model.state_dict())
    # Real checkpoints carry this buffer and laion-clap's loader deletes it unconditionally.
    state.setdefault("text_branch.embeddings.position_ids", torch.arange(TEXT_POSITIONS).unsqueeze(0))
    checkpoint = root / "tiny-htsat.pt"
    torch.save({"state_dict": state}, checkpoint)
    return checkpoint, backbones


def _clip_vocabulary(folder: Path) -> Path:
    """vocab.json and merges.txt in CLIP's BPE layout: every byte symbol alone and ending a word
    (`</w>`), a few merges of the corpus's words, and CLIP's two special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(ByteLevel.alphabet())
    merges = [("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>")]
    tokens = [*symbols, *(f"{s}</w>" for s in symbols), *(a + b for a, b in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def build_clip(out: Path, scratch: Path, seed: int = 0) -> Path:
    """A tiny CLIPModel (32-pixel images, 64-d projection) with its image processor and tokenizer,
    loadable by CLIPModel and AutoProcessor as openai/clip-vit-large-patch14 is."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(_clip_vocabulary(scratch / "clip-bpe")))
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=64,
    )
    model = CLIPModel(config).eval()
    _spread_weights(model, seed)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    target = out / "clip"
    model.save_pretrained(target)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)
    return target


def build_ast(out: Path, seed: int = 0) -> Path:
    """A tiny ASTModel (64 mel bins, 512 frames: 5.12 s at 16 kHz, 32-d) with its feature extractor,
    loadable by ASTModel and AutoFeatureExtractor as MIT/ast-finetuned-audioset-10-10-0.4593 is."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=64,
        max_length=512,
        patch_size=16,
        frequency_stride=16,
        time_stride=16,
    )
    model = ASTModel(config).eval()
    _spread_weights(model, seed)
    target = out / "ast"
    model.save_pretrained(target)
    ASTFeatureExtractor(num_mel_bins=64, max_length=512, sampling_rate=16000).save_pretrained(target)
    return target


QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The Qwen chat layout: role headers between im_start/im_end, an image as a vision span.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen2_5_vl(out: Path, scratch: Path, seed: int = 0) -> Path:
    """A two-layer Qwen2.5-VL with its processor, loadable by AutoModelForImageTextToText."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(seed)
    answer = '{"caption": "a dog on the grass", "sounds": [{"label": "dog", "text": "a dog barking"}]}'
    folder = _train_bpe(scratch / "qwen-bpe", QWEN_SPECIAL_TOKENS, _CORPUS + answer)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS)))
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # Multimodal rotary sections must sum to half the head width (64 / 4 / 2 = 8).
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    target = out / "vlm-qwen2_5_vl"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def _audio_diffusion_parts(seed: int) -> dict:
    """The parts AudioLDM and AudioLDM 2 share, tiny: the mel VAE, a DDIM scheduler and the vocoder.

    The vocoder upsamples each mel frame 320 times (the real 16 kHz HiFi-GAN: 160), so a 5 s sound
    is 250 frames of 8 mel bins and 125 x 4 latents: a few denoising steps take well under a second
    per sound on a CPU. Its weights are spread (`_spread_weights`) so the sound is audible, not near-silence the
    pool would flag and never embed."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=1,
        out_channels=1,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    )
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=8,
            sampling_rate=16000,
            upsample_initial_channel=32,
            upsample_rates=[5, 4, 4, 2, 2],
            upsample_kernel_sizes=[10, 8, 8, 4, 4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
        )
    )
    _spread_weights(vocoder, seed)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    return {"vae": vae, "scheduler": scheduler, "vocoder": vocoder}


# The UNet's two levels: plain convolutions, then cross-attention.
_UNET_LEVELS = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": (8, 16),
}


def build_audioldm(out: Path, scratch: Path, seed: int = 0) -> Path:
    """A tiny AudioLDMPipeline from diffusers' and transformers' own component classes, saved with
    save_pretrained, so generate loads it through DiffusionPipeline.from_pretrained like a real one."""
    import torch
    from diffusers import AudioLDMPipeline, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection, RobertaTokenizer

    torch.manual_seed(seed)
    tokenizer = RobertaTokenizer.from_pretrained(str(_train_bpe(scratch / "bpe")), model_max_length=77)
    text_width = 8
    # AudioLDM conditions on the CLAP text embedding as a class embedding, concatenated.
    unet = UNet2DConditionModel(
        **_UNET_LEVELS,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=text_width,
        class_embeddings_concat=True,
    )
    text_encoder = ClapTextModelWithProjection(
        ClapTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=16,
            num_attention_heads=1,
            num_hidden_layers=1,
            max_position_embeddings=TEXT_POSITIONS,
            projection_dim=text_width,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
        )
    )
    parts = _audio_diffusion_parts(seed)
    pipeline = AudioLDMPipeline(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, **parts)
    target = out / "audioldm"
    pipeline.save_pretrained(target)
    return target


def build_audioldm2(out: Path, scratch: Path, seed: int = 0) -> Path:
    """A tiny AudioLDM2Pipeline: a CLAP and a T5 encoder whose projected states a GPT-2 turns into
    the UNet's conditioning, with the VAE, scheduler and vocoder of the tiny AudioLDM. The T5
    tokenizer is a Unigram one over the words of the demo corpus, built here."""
    import torch
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        GPT2Config,
        GPT2LMHeadModel,
        RobertaTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    torch.manual_seed(seed)
    tokenizer = RobertaTokenizer.from_pretrained(str(_train_bpe(scratch / "bpe")), model_max_length=77)
    words = sorted(set(_CORPUS.replace(".", " ").split()))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    t5_tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=77)
    width = 16
    clap = ClapModel(
        ClapConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 8,
                "intermediate_size": 16,
                "num_attention_heads": 1,
                "num_hidden_layers": 1,
                "max_position_embeddings": TEXT_POSITIONS,
                "projection_dim": 8,
                "bos_token_id": 0,
                "pad_token_id": 1,
                "eos_token_id": 2,
            },
            audio_config={
                "spec_size": 8,
                "window_size": 4,
                "num_mel_bins": 8,
                "intermediate_size": 16,
                "depths": [1, 1],
                "num_attention_heads": [1, 1],
                "num_hidden_layers": 1,
                "hidden_size": 16,
                "patch_size": 2,
                "patch_stride": 2,
                "patch_embeds_hidden_size": 8,
                "patch_embed_input_channels": 4,
                "projection_dim": 8,
            },
            projection_dim=width,
        )
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tokenizer), d_model=width, d_ff=width, d_kv=8, num_heads=1, num_layers=1)
    )
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=width, n_head=1, n_layer=1, vocab_size=100, n_positions=99))
    # How many conditioning states GPT-2 generates per prompt (the real checkpoints: 8).
    language_model.config.max_new_tokens = 8
    pipeline = AudioLDM2Pipeline(
        text_encoder=clap,
        text_encoder_2=t5,
        projection_model=AudioLDM2ProjectionModel(
            text_encoder_dim=width, text_encoder_1_dim=width, langauge_model_dim=width
        ),
        language_model=language_model,
        tokenizer=tokenizer,
        tokenizer_2=t5_tokenizer,
        feature_extractor=ClapFeatureExtractor(hop_length=7900),
        unet=AudioLDM2UNet2DConditionModel(**_UNET_LEVELS),
        **_audio_diffusion_parts(seed),
    )
    target = out / "audioldm2"
    pipeline.save_pretrained(target)
    return target


def build_all(out: str | Path, seed: int = 0) -> dict[str, str]:
    import tempfile

    from demo.timbre_model import build_timbre_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        hf = build_transformers_clap(out, Path(scratch) / "hf", seed)
        checkpoint, backbones = build_laion_clap(out, Path(scratch) / "laion", seed)
        vlm = build_qwen2_5_vl(out, Path(scratch) / "vlm", seed)
        audioldm = build_audioldm(out, Path(scratch) / "audioldm", seed)
        audioldm2 = build_audioldm2(out, Path(scratch) / "audioldm2", seed)
        clip = build_clip(out, Path(scratch) / "clip", seed)
    ast = build_ast(out, seed)
    timbre = build_timbre_model(out, seed)
    written = {
        "clap_transformers": str(hf),
        "clap_laion_checkpoint": str(checkpoint),
        "clap_laion_text_backbones": str(backbones),
        "vlm_qwen2_5_vl": str(vlm),
        "timbre_torchscript": str(timbre),
        "audioldm": str(audioldm),
        "audioldm2": str(audioldm2),
        "clip": str(clip),
        "ast": str(ast),
    }
    (out / "models.json").write_text(json.dumps(written, indent=2) + "\n")
    return written
