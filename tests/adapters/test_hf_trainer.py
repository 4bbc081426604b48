"""A patched model trains with the HF Trainer and keeps its head through PEFT/LoRA save and load."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, CLIPConfig, CLIPModel, Trainer, TrainingArguments

import ncl_ext

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
TEXT = dict(TINY, vocab_size=99, pad_token_id=0, bos_token_id=1, eos_token_id=98)


pytestmark = pytest.mark.usefixtures("seed_and_one_thread")


def tiny_classifier() -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(**TEXT, num_labels=2))


def tiny_dataset(size: int = 16, length: int = 8) -> list[dict]:
    """Sequences labelled by whether token 7 occurs: a task the tiny model can start to learn."""
    examples = []
    for index in range(size):
        input_ids = torch.randint(8, 99, (length,))
        if index % 2:
            input_ids[index % length] = 7
        examples.append({"input_ids": input_ids, "labels": torch.tensor(index % 2)})
    return examples


def train(model, output_dir, steps: int = 4) -> Trainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=tiny_dataset())
    trainer.train()
    return trainer


def pooled(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The pooled BERT embedding the classifier reads, for a plain or a PEFT-wrapped model."""
    classifier = model.get_base_model() if isinstance(model, PeftModel) else model
    return classifier.bert(input_ids).pooler_output


def test_trainer_trains_saves_and_reloads_a_patched_model(tmp_path):
    model = ncl_ext.patch(tiny_classifier())
    initial = copy.deepcopy(model.state_dict())
    trainer = train(model, tmp_path / "run")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(initial[key], value) for key, value in model.state_dict().items())

    trainer.save_model(str(tmp_path / "saved"))
    loaded = ncl_ext.from_pretrained(tmp_path / "saved").eval()
    model.eval()
    input_ids = torch.stack([example["input_ids"] for example in tiny_dataset(4)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)
        features = pooled(loaded, input_ids)
    assert (features >= 0).all() and (features == 0).any()


def test_lora_adapter_keeps_the_head_through_trainer_save_and_load(tmp_path):
    ncl_ext.patch(tiny_classifier()).save_pretrained(tmp_path / "base")
    base = ncl_ext.from_pretrained(tmp_path / "base")  # name_or_path now points at the saved base
    lora = LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = get_peft_model(base, lora)
    train(model, tmp_path / "run")
    model.save_pretrained(tmp_path / "adapter")

    input_ids = torch.stack([example["input_ids"] for example in tiny_dataset(4)])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits
        reloaded = ncl_ext.from_pretrained(tmp_path / "adapter").eval()  # base + head + adapter
        onto_base = PeftModel.from_pretrained(ncl_ext.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
        for loaded in (reloaded, onto_base):
            assert isinstance(loaded, PeftModel)
            torch.testing.assert_close(loaded(input_ids=input_ids).logits, expected, rtol=0, atol=0)
            assert (pooled(loaded, input_ids) >= 0).all()


def test_lora_on_the_embedding_projection_keeps_the_output_non_negative(tmp_path):
    config = CLIPConfig(text_config=TEXT, vision_config=dict(TINY, image_size=32, patch_size=8), projection_dim=16)
    ncl_ext.patch(CLIPModel(config)).save_pretrained(tmp_path / "base")
    base = ncl_ext.from_pretrained(tmp_path / "base").eval()
    unadapted = copy.deepcopy(base)
    # LoRA wraps the very layer the head sits on; the head moves onto the wrapper's output
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["visual_projection"], init_lora_weights=False))
    pixel_values = torch.randn(6, 3, 32, 32)

    def image_features(m):
        features = m.get_image_features(pixel_values=pixel_values)
        return features if isinstance(features, torch.Tensor) else features.pooler_output

    with torch.no_grad():
        features = image_features(model)
        lora_layer = model.base_model.model.visual_projection
        pooled_image = unadapted.vision_model(pixel_values).pooler_output
        adapted = pooled_image @ unadapted.visual_projection.weight.T + lora_layer.scaling["default"] * (
            pooled_image @ lora_layer.lora_A["default"].weight.T @ lora_layer.lora_B["default"].weight.T
        )
        torch.testing.assert_close(features, torch.relu(adapted))
        assert (features >= 0).all() and (features == 0).any()

        model.save_pretrained(tmp_path / "adapter")
        reloaded = ncl_ext.from_pretrained(tmp_path / "adapter").eval()
        torch.testing.assert_close(image_features(reloaded), features, rtol=0, atol=0)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(image_features(merged), features)
        assert (image_features(merged) >= 0).all()


def test_gradient_checkpointing_keeps_the_head_and_the_gradients():
    config = BertConfig(**TEXT, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ncl_ext.patch(BertForSequenceClassification(config)).train()
    reference = copy.deepcopy(model)
    # transformers 5 renamed gradient_checkpointing_enable (4.x) to activation_checkpointing_enable
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
    input_ids = torch.stack([example["input_ids"] for example in tiny_dataset(4)])
    labels = torch.tensor([0, 1, 0, 1])
    model(input_ids=input_ids, labels=labels).loss.backward()
    reference(input_ids=input_ids, labels=labels).loss.backward()
    for (name, param), ref_param in zip(model.named_parameters(), reference.parameters(), strict=True):
        if ref_param.grad is not None:
            torch.testing.assert_close(param.grad, ref_param.grad, msg=name)
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    features = pooled(model, input_ids)
    assert (features >= 0).all() and (features == 0).any()


def test_make_nonneg_refuses_a_peft_model_and_points_to_patch():
    model = get_peft_model(tiny_classifier(), LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match=r"use ncl_ext\.patch\(model"):
        ncl_ext.make_nonneg(model)
    patched = ncl_ext.patch(model)  # what it points to works on the PEFT model
    input_ids = torch.stack([example["input_ids"] for example in tiny_dataset(4)])
    assert (pooled(patched, input_ids) >= 0).all()
