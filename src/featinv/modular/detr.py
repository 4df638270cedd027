"""transformers' DETR as four stages: ``bb`` = convolutional backbone + input projection (a map
(B, D, h, w)), ``enc`` = transformer encoder (tokens (B, h*w, D)), ``dec`` = transformer decoder over
the object queries (B, Q, D), ``pred`` = class logits and boxes, concatenated (B, Q, C+1+4): the
full distribution of class logits the paper's pred_FD^-1 sees (the one-hot variant:
:mod:`featinv.modular.prediction`).

Images of one size share one unpadded mask, so every stage is a function of the previous
representation alone; the grid (h, w) of the backbone's map is fixed by the input size.
"""

from __future__ import annotations

import torch

from featinv.modular.stages import ForwardModel, Stage, StagedModel


def detr_stages(model: ForwardModel, image_size: tuple[int, int]) -> StagedModel:
    """Stages of a ``DetrForObjectDetection`` for images of ``image_size`` (H, W)."""
    detr = model.model
    with torch.no_grad():
        probe = detr.backbone(torch.zeros(1, 3, *image_size), torch.ones(1, *image_size))[-1][0]
    grid = (int(probe.shape[-2]), int(probe.shape[-1]))

    def positions(batch: int, like: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(batch, *grid, dtype=torch.bool, device=like.device)
        shape = torch.Size([batch, detr.config.d_model, *grid])
        return detr.position_embedding(shape=shape, device=like.device, dtype=like.dtype, mask=mask).flatten(2).transpose(1, 2)

    def bb(x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[0], *x.shape[-2:], device=x.device)
        feature_map, _ = detr.backbone(x, mask)[-1]
        return detr.input_projection(feature_map)

    def run_encoder(fmap: torch.Tensor, **kw):
        tokens = fmap.flatten(2).transpose(1, 2)
        ones = torch.ones(tokens.shape[:2], device=tokens.device, dtype=torch.long)
        return detr.encoder(inputs_embeds=tokens, attention_mask=ones,
                            spatial_position_embeddings=positions(tokens.shape[0], tokens), **kw)

    def run_decoder(memory: torch.Tensor, **kw):
        batch = memory.shape[0]
        query_pos = detr.query_position_embeddings.weight.unsqueeze(0).repeat(batch, 1, 1)
        ones = torch.ones(memory.shape[:2], device=memory.device, dtype=torch.long)
        return detr.decoder(inputs_embeds=torch.zeros_like(query_pos), spatial_position_embeddings=positions(batch, memory),
                            object_queries_position_embeddings=query_pos, encoder_hidden_states=memory,
                            encoder_attention_mask=ones, **kw)

    def enc(fmap: torch.Tensor) -> torch.Tensor:
        return run_encoder(fmap).last_hidden_state

    def enc_layers(fmap: torch.Tensor) -> list[torch.Tensor]:  # every encoder layer's output
        return list(run_encoder(fmap, output_hidden_states=True).hidden_states[1:])

    def dec(memory: torch.Tensor) -> torch.Tensor:
        return run_decoder(memory).last_hidden_state

    def dec_layers(memory: torch.Tensor) -> list[torch.Tensor]:  # every decoder layer's output, layer-normed
        hidden = run_decoder(memory, output_hidden_states=True).hidden_states[1:]
        return [detr.decoder.layernorm(h) for h in hidden]

    def pred(queries: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.class_labels_classifier(queries), model.bbox_predictor(queries).sigmoid()], dim=-1)

    stages = [Stage("bb", bb, [detr.backbone, detr.input_projection], inverse="conv"),
              Stage("enc", enc, [detr.encoder], inverse="tokens_to_map", layers=enc_layers),
              Stage("dec", dec, [detr.decoder, detr.query_position_embeddings], inverse="queries_to_tokens",
                    layers=dec_layers),
              Stage("pred", pred, [model.class_labels_classifier, model.bbox_predictor], inverse="per_token_mlp")]
    staged = StagedModel(model, stages, "detr")
    staged.grid = grid
    staged.boxes = 4  # x_pred's last 4 channels are boxes (cx, cy, w, h in [0, 1]), not class logits
    return staged
