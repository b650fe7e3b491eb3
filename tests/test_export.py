"""In-training export: a Megatron state dict + TransformerConfig -> TensorRT-LLM, no TensorRT-LLM."""

import json
from pathlib import Path

import pytest
import torch
from helpers import ferry_logits, safetensors_file

from ferry.export import ExportConfig, ExportConfigError, trtllm_weights, write_trtllm

DATA = Path(__file__).parent / "data" / "megatron"
FACTS = {
    "llama": dict(position_embedding_type="rope", rotary_base=500000, max_position_embeddings=64, vocab_size=1000),
    "gpt": dict(position_embedding_type="learned_absolute", max_position_embeddings=64, vocab_size=1000,
                share_embeddings_and_output_weights=True),
}


def live(name: str):
    """A model's state dict and TransformerConfig fields, as a training job holds them."""
    state = torch.load(DATA / name / "tp1/legacy/iter_0000001/mp_rank_00/model_optim_rng.pt", weights_only=False)["model"]
    config = json.loads((DATA / name / "tp1/config.json").read_text())["transformer_config"]
    return state, config


def stacked(state: dict, layers: int) -> dict:
    """The same weights with layers stacked on a leading axis (state_dict_split_by_layer_numbers=False)."""
    out, per_layer = {}, {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("decoder.layers.") and value is not None:
            per_layer.setdefault(".".join(parts[:2] + parts[3:]), {})[int(parts[2])] = value
        elif not key.startswith("decoder.layers."):
            out[key] = value
    for key, values in per_layer.items():
        out[key] = torch.stack([values[i] for i in range(layers)])
    return out


@pytest.mark.parametrize("name", ["llama", "gpt"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_export_matches_megatron_logits(tmp_path, name, tp):
    state, config = live(name)
    write_trtllm(tmp_path / "trt", state, config, ExportConfig(inference_tp_size=tp, dtype="float32"), **FACTS[name])
    ref = torch.load(DATA / name / "tp1/ref_logits.pt", weights_only=False)
    got = ferry_logits(tmp_path / "trt", ref["input_ids"])
    assert (got - ref["logits"][..., :1000]).abs().max().item() <= 1e-4


def test_in_memory_weights_equal_the_written_files_and_stacked_input(tmp_path):
    state, config = live("llama")
    export = ExportConfig(inference_tp_size=2, inference_pp_size=3, dtype="bfloat16")
    write_trtllm(tmp_path / "trt", state, config, export, **FACTS["llama"])
    weights, configs = trtllm_weights(stacked(state, 3), config, export, **FACTS["llama"])
    assert len(weights) == len(configs) == 6
    assert [c["mapping"] for c in configs] == [{"world_size": 6, "tp_size": 2, "pp_size": 3, "rank": r} for r in range(6)]
    written = json.loads((tmp_path / "trt" / "config.json").read_text())
    assert {k: v for k, v in configs[0].items() if k != "mapping"} == {k: v for k, v in written.items() if k != "mapping"}
    for r, w in enumerate(weights):
        on_disk = safetensors_file(tmp_path / "trt" / f"rank{r}.safetensors")
        assert w.keys() == on_disk.keys()
        assert all(torch.equal(w[k], on_disk[k]) and w[k].dtype == torch.bfloat16 for k in w)



def test_kv_groups_that_tp_cannot_split():
    state, config = live("llama")  # 8 heads, 2 query groups
    with pytest.raises(ExportConfigError) as e:
        trtllm_weights(state, config, ExportConfig(inference_tp_size=3), **FACTS["llama"])
    assert str(e.value) == ("inference_tp_size 3: cannot split attention: num_attention_heads (8) must be divisible by tp, "
                            "and num_key_value_heads (2) must be a multiple or a divisor of tp")


def test_tp_beyond_heads():
    state, config = live("gpt")  # 4 heads
    with pytest.raises(ExportConfigError, match=r"num_attention_heads \(4\) must be divisible by tp"):
        trtllm_weights(state, config, ExportConfig(inference_tp_size=8), **FACTS["gpt"])


def test_missing_vocab_size():
    state, config = live("gpt")
    with pytest.raises(ExportConfigError) as e:
        trtllm_weights(state, config, ExportConfig(), **{**FACTS["gpt"], "vocab_size": None})
    assert str(e.value) == "vocab_size is required: the tokenizer's vocabulary (the state dict holds only padded rows)"


def test_deprecated_embedding_sharing_must_agree():
    state, config = live("gpt")
    with pytest.warns(DeprecationWarning), pytest.raises(ExportConfigError) as e:
        trtllm_weights(state, config, ExportConfig(use_embedding_sharing=False), **FACTS["gpt"])
    assert str(e.value) == "ExportConfig.use_embedding_sharing=False contradicts share_embeddings_and_output_weights=True"


def test_a_tensor_parallel_shard_is_not_the_full_model():
    state = torch.load(DATA / "llama/tp2/legacy/iter_0000001/mp_rank_00/model_optim_rng.pt", weights_only=False)["model"]
    _, config = live("llama")
    with pytest.raises(ExportConfigError) as e:
        trtllm_weights(state, config, ExportConfig(), **FACTS["llama"])
    assert str(e.value) == ("vocab_size 1000 is larger than the 512 embedding rows "
                            "(a tensor-parallel shard? pass the full, unsharded state dict)")
    state["embedding.word_embeddings.weight"] = torch.zeros(1024, 128)  # the other tensors are still shards
    with pytest.raises(ExportConfigError) as e:
        trtllm_weights(state, config, ExportConfig(), **FACTS["llama"])
    assert str(e.value) == ("model_state_dict['decoder.layers.0.self_attention.linear_proj.weight'] has shape [128, 64], "
                            "the transformer config implies [128, 128] for the full model (pass the unsharded state dict, "
                            "tensor-parallel size 1)")


def test_unknown_key_is_named():
    state, config = live("llama")
    state = {**state, "decoder.layers.0.self_attention.q_layernorm.weight": torch.ones(16)}
    with pytest.raises(ExportConfigError) as e:
        trtllm_weights(state, config, ExportConfig(), **FACTS["llama"])
    assert str(e.value) == "model_state_dict: no TensorRT-LLM counterpart for decoder.layers.0.self_attention.q_layernorm.weight"


def test_a_window_in_the_transformer_config_is_refused_not_dropped():
    from ferry.errors import UnsupportedError

    state, config = live("llama")
    with pytest.raises(UnsupportedError) as e:
        trtllm_weights(state, {**config, "window_size": [7, 0]}, ExportConfig(), **FACTS["llama"])
    assert str(e.value).startswith("attention.window = 8 tokens on every layer: TensorRT-LLM MistralForCausalLM "
                                   "(release 1.2 config) cannot hold it")
