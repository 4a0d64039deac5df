"""Build the proposer named by ``--speculator`` and attach it to the model runner."""

from __future__ import annotations

from pathlib import Path

import torch

from specserve.config import SpecConfig
from specserve.spec.checkpoint import SpeculatorLoadError, load_mlp_speculator, read_config
from specserve.spec.decoder import SpecDecoder
from specserve.spec.head_proposer import HeadProposer, speculator_dtype
from specserve.spec.lookup_first import LookupFirstProposer
from specserve.spec.medusa import load_medusa
from specserve.spec.ngram import NgramProposer
from specserve.spec.policy import SpeculationPolicy
from specserve.spec.proposer import Proposer
from specserve.spec.siblings import default_chain_siblings

# Speculators shipped with the package, keyed by the base model folder's name prefix.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "speculators"
DEFAULT_SPECULATORS = {"SmolLM2-135M-Instruct": "smollm2-135m-instruct-mlp"}
NGRAM_DEPTH = 8  # prompt lookup's longest draft: a copy in progress often continues for many tokens


def default_speculator_for(model_dir: Path) -> Path:
    for prefix, name in DEFAULT_SPECULATORS.items():
        if model_dir.name.startswith(prefix) or prefix.lower() in model_dir.name.lower():
            path = SHIPPED_DIR / name
            if (path / "config.json").is_file():
                return path
            raise SpeculatorLoadError(f"the default speculator for {prefix} is not in this build ({path})")
    raise SpeculatorLoadError(f"no default speculator is shipped for the model at {model_dir}")


def build_proposer(spec: str, model: torch.nn.Module, model_dir: Path, dtype: torch.dtype,
                   device: torch.device, num_candidates: int | None,
                   num_speculative_tokens: int | None = None,
                   chain_siblings: int = 0) -> tuple[Proposer, int, int]:
    """Returns (proposer, its max depth, its max candidates). ``num_speculative_tokens`` lets a tied
    MLP speculator run more stages than it was trained with (other speculators are capped by theirs)."""
    if spec == "ngram":
        return NgramProposer(), NGRAM_DEPTH, num_candidates or 1
    if spec.endswith("+ngram"):  # prompt lookup where the text repeats, the named speculator elsewhere
        inner, depth, cands = build_proposer(spec.removesuffix("+ngram"), model, model_dir, dtype, device,
                                             num_candidates, num_speculative_tokens, chain_siblings)
        return LookupFirstProposer(inner), max(depth, NGRAM_DEPTH), cands
    kind, _, rest = spec.partition(":")
    if kind == "draft":
        from specserve.spec.draft_model import DraftModelProposer

        proposer = DraftModelProposer.from_path(rest, dtype=dtype, device=device)
        return proposer, proposer.max_depth, 1
    if kind == "medusa":
        medusa = load_medusa(rest)
        cands = num_candidates or medusa.config.n_candidates
        return (HeadProposer("medusa", medusa, list(medusa.config.top_k_tokens_per_head), cands,
                             speculator_dtype(dtype, device), device, chain_siblings=chain_siblings),
                medusa.config.num_heads, cands)
    path = Path(rest) if kind == "mlp" else (default_speculator_for(model_dir) if spec == "default" else Path(spec))
    if not path.exists():
        raise SpeculatorLoadError(f"speculator path {path} does not exist")
    arch = read_config(path).get("architectures", ["MLPSpeculatorPreTrainedModel"])
    if "MedusaHeads" in arch:
        return build_proposer(f"medusa:{path}", model, model_dir, dtype, device, num_candidates,
                              chain_siblings=chain_siblings)
    emb = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings()
    head = head.detach() if isinstance(head, torch.Tensor) else head.weight.detach()
    mlp = load_mlp_speculator(path, base_embedding=emb.float(), base_head=head.float(),
                              num_lookahead_tokens=num_speculative_tokens)
    cands = num_candidates or mlp.config.n_candidates
    return (HeadProposer("mlp", mlp, list(mlp.config.top_k_tokens_per_head), cands,
                         speculator_dtype(dtype, device), device, chain_siblings=chain_siblings),
            mlp.config.max_depth, cands)


def build_spec_decoder(config: SpecConfig, model: torch.nn.Module, model_dir: Path, dtype: torch.dtype,
                       device: torch.device) -> tuple[SpecDecoder, int, int]:
    assert config.speculator is not None
    proposer, depth, cands = build_proposer(config.speculator, model, model_dir, dtype, device,
                                            config.num_candidates, config.num_speculative_tokens,
                                            default_chain_siblings(device) if config.chain_siblings is None
                                            else config.chain_siblings)
    if config.num_speculative_tokens is not None:
        depth = min(depth, config.num_speculative_tokens) if proposer.needs_hidden else config.num_speculative_tokens
    policy = SpeculationPolicy(config.speculation, depth, cands,
                               chain_extra_nodes=getattr(proposer, "chain_extra_nodes", None))
    return SpecDecoder(proposer, policy), depth, cands
