from .losses import TokenizerLosses, cosine_distillation_loss, flow_matching_loss, tokenizer_losses

__all__ = ["TokenizerLosses", "cosine_distillation_loss", "flow_matching_loss", "tokenizer_losses"]
