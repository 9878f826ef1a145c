"""Answer guidance: steer text-to-image sampling with the model's own understanding.

After a denoising step the flow's clean estimate `x0 = x_t - t v` is asked questions whose answers the prompt fixes
("is there a red circle?" -> "yes") through the understanding path (Sem-ViT reads the latent: no pixels are decoded),
and the latents move a small step down the gradient of the answers' negative log-likelihood. HYDRA's understanding
reads colour binding and relations more reliably than its drawing gets them right, so its gradient repairs some of
the drawing's mistakes (docs/experiments.md, thirty-first round)."""

import PIL.Image
import torch
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["AnswerGuidance", "QuestionAnswer", "answer_batch", "summed_answer_log_probs"]

QuestionAnswer = tuple[str, str]


def answer_batch(processor, images: list, pairs: list[QuestionAnswer]) -> tuple[dict, list[tuple[int, int]]]:
    """The processor's right-padded batch of each (question, answer) asked of its image, and each row's answer span
    (the positions of the answer tokens)."""
    conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
                     for question, _ in pairs]
    prompts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    batch = processor(text=[prompt + answer for prompt, (_, answer) in zip(prompts, pairs)], images=images,
                      padding_side="right")
    spans = [(end - len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"]), end)
             for end, (_, answer) in zip(batch["attention_mask"].sum(dim=1).tolist(), pairs)]
    return batch, spans


def summed_answer_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, spans: list[tuple[int, int]]
                            ) -> torch.Tensor:
    """`[rows]`: log p(answer tokens) of each row, its span read from the logits one position earlier."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([log_probs[row, start - 1 : end - 1].gather(-1, input_ids[row, start:end, None]).sum()
                        for row, (start, end) in enumerate(spans)])


class AnswerGuidance:
    """The latent update of answer guidance for one pipeline call.

    Image i is asked `questions[i]` (an empty list leaves it alone). `step` takes the latents after an Euler step
    and the velocity of that step, and, when the step ends at flow time >= `min_time`, returns the latents moved by
    `scale` times the RMS of each image's gradient of `-sum log p(answer | x0)`, averaged over `smoothing = (draws,
    sigma)` reads of `x0 + sigma * noise` (the noise from each image's own generator, so an image's result does not
    depend on its batch). The smoothing keeps the step from painting fragments that only the understanding sees.
    """

    def __init__(self, model, processor, questions: list[list[QuestionAnswer]], scale: float, min_time: float,
                 smoothing: tuple[int, float]):
        self.model, self.scale, self.min_time = model, scale, min_time
        self.draws, self.sigma = smoothing
        self.asked = [i for i, pairs in enumerate(questions) if pairs]
        self.owners = torch.tensor([i for i, pairs in enumerate(questions) for _ in pairs], dtype=torch.long)
        pairs = [pair for image_pairs in questions for pair in image_pairs]
        self.batch = None
        if pairs:  # tokenised once; the images are latents, so any picture of the right size stands in
            size = model.model.vision_model.config.image_size
            self.batch, self.spans = answer_batch(processor, [PIL.Image.new("RGB", (size, size))] * len(pairs), pairs)

    def applies_at(self, next_time: float) -> bool:
        return self.batch is not None and self.scale > 0 and next_time >= self.min_time

    def step(self, latents: torch.Tensor, velocity: torch.Tensor, next_time: float,
             generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        if not self.applies_at(next_time):
            return latents
        device = latents.device
        # Pipelines sample under inference mode, and tensors made there (the latents, the velocity, this object's
        # token ids) cannot enter autograd: clones of them, made outside it, can.
        with torch.inference_mode(False), torch.enable_grad():
            x0 = (latents.clone() - next_time * velocity.clone()).requires_grad_(True)
            owners = self.owners.to(device).clone()
            batch = {name: self.batch[name].to(device).clone() for name in ("input_ids", "attention_mask")}
            asked_generators = [generator[i] for i in self.asked] if isinstance(generator, list) else generator
            vision = self.model.model.vision_model
            gradient = torch.zeros_like(x0)
            for _ in range(self.draws):
                read = x0
                if self.sigma:
                    noise = randn_tensor((len(self.asked), *x0.shape[1:]), generator=asked_generators,
                                         device=device, dtype=x0.dtype)
                    read = x0.index_add(0, torch.tensor(self.asked, device=device), self.sigma * noise)
                logits = self.model(**batch, image_latents=vision.denormalize_latents(read)[owners]).logits
                loss = -summed_answer_log_probs(logits, batch["input_ids"], self.spans).sum()
                gradient += torch.autograd.grad(loss, x0)[0]
            rms = gradient.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            # images asked nothing have a zero gradient, so they stay exactly where they were
            return latents.clone() - self.scale * gradient / rms.clamp_min(1e-12)
