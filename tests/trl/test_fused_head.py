"""hf.head: SCALe's loss inside the LM head, on tiny transformers models. With equal weights (token normalization)
the loss and every parameter's gradient equal the stock model loss's; the [B, T, V] logits never exist."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import scale_plugins.core.fused as fused_module
from scale_plugins.core import TokenWeights, prediction_stats, shift_targets
from scale_plugins.hf.head import FALLBACK_NAME, fused_head_unsupported, per_token_loss

VOCAB = 320
SEQ = 24
BATCH = 2


def _text_config(cls, **extra):
    return cls(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        **extra,
    )


def qwen2(tied: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(_text_config(Qwen2Config, tie_word_embeddings=tied))


def llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(_text_config(LlamaConfig, tie_word_embeddings=tied))


def gemma3_text():
    transformers = pytest.importorskip("transformers")
    config = _text_config(transformers.Gemma3TextConfig, final_logit_softcapping=2.5, tie_word_embeddings=True)
    return transformers.Gemma3ForCausalLM(config)


def gemma2_softcap():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(_text_config(Gemma2Config, final_logit_softcapping=2.5, tie_word_embeddings=True))


def hyperclovax():
    """HyperCLOVA X multiplies the logits by ``logits_scaling`` (Granite divides by it): transformers >= 5.16."""
    import transformers

    if not hasattr(transformers, "HyperCLOVAXForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no HyperCLOVA X")
    return transformers.HyperCLOVAXForCausalLM(_text_config(transformers.HyperCLOVAXConfig, logits_scaling=2.0))


def cohere():
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(_text_config(CohereConfig, logit_scale=0.25))


def granite():
    from transformers import GraniteConfig, GraniteForCausalLM

    return GraniteForCausalLM(_text_config(GraniteConfig, logits_scaling=3.0))


def vlm(model_type: str):
    from transformers import AutoModelForImageTextToText

    from scale_plugins.testing import tiny_vlm_config

    return AutoModelForImageTextToText.from_config(tiny_vlm_config(model_type, vocab_size=VOCAB))


MODELS = {
    "qwen2-tied": lambda: qwen2(True),
    "qwen2-untied": lambda: qwen2(False),
    "llama-tied": lambda: llama(True),
    "llama-untied": lambda: llama(False),
    "gemma3-softcap": gemma3_text,
    "gemma2-softcap": gemma2_softcap,
    "cohere-logit-scale": cohere,
    "granite-logits-scaling": granite,
    "hyperclovax-logits-scaling": hyperclovax,
    "vlm-qwen2_5_vl": lambda: vlm("qwen2_5_vl"),
    "vlm-llava_next": lambda: vlm("llava_next"),
    "vlm-gemma3": lambda: vlm("gemma3"),
}


def build(name: str, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name]()
    model.config.use_cache = False
    return model.float().train()


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB - 5, (BATCH, SEQ), generator=g)
    labels = input_ids.clone()
    labels[0, :7] = -100
    labels[1, :3] = -100
    labels[1, -4:] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def equal_weights(labels: torch.Tensor) -> TokenWeights:
    """answer_weight_start = end = 0.5, normalization token: w_i = 1 / (supervised tokens), the stock mean."""
    targets = shift_targets(labels)
    supervised = (targets != -100).float()
    w = supervised / supervised.sum()
    return TokenWeights(loss=w, segment=w)


def stock_step(model, inputs):
    loss = model(**inputs).loss
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return loss.detach(), grads


def fused_step(model, inputs, **kwargs):
    result = per_token_loss(model, inputs, equal_weights(inputs["labels"]), **kwargs)
    grads = torch.autograd.grad(result.loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return result, grads


def assert_same(grads_a, grads_b, model, rtol=1e-5):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    compared = 0
    for name, a, b in zip(names, grads_a, grads_b):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= rtol * max(scale, 1e-6), (name, float((a - b).abs().max()), scale)
        compared += 1
    assert compared > 0


class LargestLogits(TorchDispatchMode):
    """Records the largest tensor with a last dimension of V that any op produces (other than the head weight's
    views: W.T is [H, V])."""

    def __init__(self, vocab: int, hidden: int = 32):
        super().__init__()
        self.vocab, self.weight_numel, self.largest = vocab, vocab * hidden, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (
                isinstance(t, torch.Tensor)
                and t.dim() >= 2
                and t.shape[-1] == self.vocab
                and t.numel() != self.weight_numel
            ):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", list(MODELS))
def test_equal_weights_give_the_stock_loss_and_gradients(name, monkeypatch):
    model = build(name)
    inputs = batch()
    reason = fused_head_unsupported(model)
    assert reason is None, reason
    stock_loss, stock_grads = stock_step(model, inputs)
    # small chunks (4 rows): the largest [.., V] tensor of the fused path is one chunk, never the logits
    monkeypatch.setattr(fused_module, "CHUNK_VALUES", 4 * VOCAB)
    head_outputs = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_outputs.append(o.shape))
    with LargestLogits(VOCAB) as probe:
        result, grads = fused_step(model, inputs)
    hook.remove()
    assert result.fused and result.outputs.logits is None
    assert head_outputs == [torch.Size([1, 1, 1])]
    assert probe.largest <= 4 * VOCAB < BATCH * SEQ * VOCAB
    assert abs(float(result.loss.detach()) - float(stock_loss)) <= 1e-5 * abs(float(stock_loss))
    assert_same(grads, stock_grads, model)
    # the model is left as it was: its own head and post-processing are back
    assert "forward" not in vars(model.get_output_embeddings())
    with torch.no_grad():
        assert torch.allclose(model(**inputs).loss, stock_loss, rtol=1e-6)


def test_the_logits_path_does_materialise_them():
    """The probe of the test above can fail: the logits path produces [B, T, V]."""
    model = build("qwen2-tied")
    with LargestLogits(VOCAB) as probe:
        result = per_token_loss(model, batch(), equal_weights(batch()["labels"]), fused=False)
    assert not result.fused and probe.largest >= BATCH * SEQ * VOCAB


@pytest.mark.parametrize("name", ["qwen2-tied", "gemma3-softcap"])
def test_stats_equal_the_logits_ones(name):
    model = build(name)
    inputs = batch()
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    count, entropy, correct = prediction_stats(logits, shift_targets(inputs["labels"]))
    result = per_token_loss(model, inputs, equal_weights(inputs["labels"]), stats=True)
    assert result.fused
    assert int(result.count) == int(count)
    assert abs(float(result.entropy_sum) - float(entropy)) <= 1e-5 * float(entropy)
    assert int(result.correct) == int(correct)


def test_gradient_checkpointing():
    model = build("llama-untied")
    stock_loss, stock_grads = stock_step(model, batch())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    result, grads = fused_step(model, batch())
    assert result.fused
    assert abs(float(result.loss) - float(stock_loss)) <= 1e-5 * float(stock_loss)
    assert_same(grads, stock_grads, model)


def test_peft_lora_on_attention():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        build("qwen2-tied"),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    stock_loss, stock_grads = stock_step(model, batch())
    result, grads = fused_step(model, batch())
    assert result.fused
    assert abs(float(result.loss) - float(stock_loss)) <= 1e-5 * float(stock_loss)
    assert_same(grads, stock_grads, model)


def test_lora_on_lm_head_falls_back_with_a_reason(caplog):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        build("qwen2-untied"),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False),
    )
    reasons = []
    stock_loss, stock_grads = stock_step(model, batch())
    result, grads = fused_step(model, batch(), on_fallback=lambda name, message: reasons.append((name, message)))
    assert not result.fused and result.outputs.logits is not None
    assert reasons and reasons[0][0] == FALLBACK_NAME and "not a plain torch.nn.Linear" in reasons[0][1]
    assert abs(float(result.loss) - float(stock_loss)) <= 1e-5 * float(stock_loss)
    assert_same(grads, stock_grads, model)


def test_trainer_counts_and_logs_the_fallback(caplog):
    """ScaleTrainerMixin.scale_per_token_loss: the reason is logged once and counted in scale/logits_path."""
    from scale_plugins.hf import ScaleTrainerMixin

    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        build("qwen2-untied"), peft.LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False)
    )

    class Host(ScaleTrainerMixin):
        pass

    host = Host()
    host.scale_options = type("Options", (), {"ignore_index": -100})()
    host._scale_fallbacks, host._scale_warned = {}, set()
    host._scale_fallbacks = __import__("collections").defaultdict(int)
    inputs = batch()
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        for _ in range(2):
            loss, ce, outputs = host.scale_per_token_loss(model, dict(inputs), None, equal_weights(inputs["labels"]))
    assert host._scale_fallbacks[FALLBACK_NAME] == 2
    assert sum("not a plain torch.nn.Linear" in r.message for r in caplog.records) == 1
    # in evaluation the logits path is the path (predictions need the logits): no fallback counted
    model.eval()
    host.scale_per_token_loss(model, dict(inputs), None, equal_weights(inputs["labels"]))
    assert host._scale_fallbacks[FALLBACK_NAME] == 2


def test_a_model_that_changes_the_head_output_is_caught():
    """A forward that post-processes the logits in a way hf.head does not know: detected, recomputed from the
    logits, and not tried again."""
    model = build("qwen2-tied")
    original = type(model).forward

    class Odd(type(model)):
        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            out["logits"] = out.logits + 1.0
            return out

    odd = copy.deepcopy(model)
    odd.__class__ = Odd
    reasons = []
    result = per_token_loss(odd, batch(), equal_weights(batch()["labels"]), on_fallback=lambda *a: reasons.append(a))
    assert not result.fused and reasons and "changes the LM head's output" in reasons[0][1]
    assert fused_head_unsupported(odd) is not None
    # the stock loss of logits + 1 is the stock loss (softmax is shift-invariant)
    stock = model(**batch()).loss
    assert abs(float(result.loss) - float(stock)) <= 1e-5 * float(stock)
