"""The RoboVLMs "Mobile VLA" policy: Kosmos-2 backbone -> LSTM over the window -> tanh MLP head.

The work is split where the runtime splits it:

* `encode_frame` runs once per camera frame: Kosmos-2's text model over the image tokens, the
  prompt and a learnable ``[action]`` embedding, arranged by the config's token layout
  (`token_layouts`: the package's ``<s> <image> [image] </image> prompt [action]``, or the team's
  ``robovlms_kosmos`` / ``robovlms_patched``); the action slot's last hidden state is the
  frame's feature. Image preprocessing (`preprocessing.FramePreprocess`: a camera-size uint8
  frame is resized with the pipeline's PIL filter, bit-exact; then /255 and the pipeline's
  mean/std) happens here, on the model's device, so exported graphs carry it.
* `decode` runs the LSTM from a given state over a window of cached features and maps the last
  output to a chunk of ``fwd_pred_next_n`` normalized actions in [-1, 1] (regression head) or
  class logits (classification head).

RoboVLMs' LSTMDecoder, at inference, re-runs the LSTM from a zero state over the last
``window_size`` features once the window is full (and carries state while it fills, which is the
same thing). The runtime therefore calls `decode` with zero state over the whole window;
``h0``/``c0`` are explicit inputs so exported graphs do not bake a state in.
"""

from __future__ import annotations

import torch
from torch import nn

from . import token_layouts
from .preprocessing import FramePreprocess


class MLPTanhHead(nn.Module):
    """RoboVLMs' MLPTanhHead: ReLU MLP with a tanh output in [-1, 1]."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, out_features), nn.Tanh()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features to tanh-bounded outputs."""
        return self.mlp(x)


class LSTMActionHead(nn.Module):
    """LSTM over frame features, then the output layer giving a chunk.

    ``head="regression"``: the tanh MLP ``actions`` -> (B, chunk, action_dim) in [-1, 1].
    ``head="classification"``: the Linear ``logits`` (MobileVLAClassificationDecoder's) ->
    (B, chunk, num_classes) raw logits; post-processing turns the argmax into a velocity.
    """

    def __init__(self, in_features: int, hidden_size: int, num_layers: int, chunk: int,
                 action_dim: int, mlp_hidden: tuple[int, ...], head: str = "regression",
                 num_classes: int = 0):
        super().__init__()
        self.chunk = chunk
        self.rnn = nn.LSTM(in_features, hidden_size, num_layers=num_layers, batch_first=True)
        if head == "classification":
            self.action_dim = num_classes
            self.logits = nn.Linear(hidden_size, chunk * num_classes)
            self.out_name = "logits"
        else:
            self.action_dim = action_dim
            self.actions = MLPTanhHead(hidden_size, mlp_hidden, chunk * action_dim)
            self.out_name = "actions"

    def forward(self, features: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        """Features (B, T, D) -> outputs (B, chunk, action_dim | num_classes), hn, cn."""
        out, (hn, cn) = self.rnn(features, (h0, c0))
        head = getattr(self, self.out_name)
        return head(out[:, -1]).view(-1, self.chunk, self.action_dim), hn, cn


class MobileVLAPolicy(nn.Module):
    """Kosmos-2 vision-language backbone with a learnable action token and an LSTM action head."""

    def __init__(self, config, prefix_ids: list[int], image_end_id: int, pad_id: int):
        from transformers import Kosmos2Config, Kosmos2Model

        super().__init__()
        self.config = config
        self.backbone = Kosmos2Model(Kosmos2Config(**config.backbone))
        dim = self.backbone.config.text_config.embed_dim
        self.feature_dim = dim
        self.action_token = nn.Parameter(torch.zeros(dim))
        self.act_head = LSTMActionHead(dim, config.lstm_hidden, config.lstm_layers,
                                       config.fwd_pred_next_n, config.action_dim,
                                       tuple(config.mlp_hidden), config.head,
                                       config.num_classes)
        # Non-persistent: they come from the tokenizer and config, not from the checkpoint.
        self.register_buffer("prefix_ids", torch.tensor(prefix_ids, dtype=torch.long),
                             persistent=False)
        self.register_buffer("image_end_ids", torch.tensor([image_end_id], dtype=torch.long),
                             persistent=False)
        self.pad_id = int(pad_id)
        # camera frame -> model input (resize with the pipeline's PIL filter, mean/std), in-graph
        self.preprocess = FramePreprocess(config.image_size, config.resize_filter,
                                          config.image_mean, config.image_std)
        self.token_layout = token_layouts.check_layout(config.token_layout, allow_auto=False)
        self._grow_positions()

    def normalize_image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) in the model's channel order -> normalized float (B, 3, S, S).

        Frames of another size than the model's are resized first, as PIL does it
        (`FramePreprocess`: bit-exact, traceable into the exported graphs).
        """
        return self.preprocess(images, dtype=self.action_token.dtype)  # the model's dtype

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """Kosmos-2's image path (as in ``Kosmos2Model.forward``, transformers 4.x and 5.x)."""
        vision = self.backbone.vision_model(pixel_values=pixels)[0]
        embeds = self.backbone.vision_model.model.post_layernorm(vision)
        embeds = nn.functional.normalize(embeds, dim=-1)
        return self.backbone.image_to_text_projection(embeds)[0]

    def _grow_positions(self) -> None:
        """Team layouts use fixed position ids past the sequence: size the table for them.

        Kosmos-2 grows its sinusoidal table from the sequence length only (rows depend on the
        index alone, so a larger table changes no value).
        """
        layout = self.token_layout
        if layout not in token_layouts.TEAM_LAYOUTS:
            return
        emb = self.backbone.text_model.model.embed_positions
        rows = token_layouts.required_positions(layout, self.config.max_text_len,
                                                self.backbone.config.latent_query_num)
        if int(emb.weights.shape[0]) < rows:
            emb.make_weights(rows, emb.embedding_dim, emb.padding_idx)

    def text_sequence(self, image_embeds: torch.Tensor, text_ids: torch.Tensor):
        """(inputs_embeds, attention_mask, position_ids) of this policy's token layout."""
        text = self.backbone.text_model.model
        embed = text.embed_tokens
        return token_layouts.build_sequence(
            self.token_layout, embed=embed, image_embeds=image_embeds.to(embed.weight.dtype),
            text_ids=text_ids, action=self.action_token, prefix_ids=self.prefix_ids,
            image_end_ids=self.image_end_ids, pad_id=self.pad_id,
            max_text_len=self.config.max_text_len,
            padding_idx=int(text.embed_positions.padding_idx))

    def encode_frame(self, images: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, H, W, 3) + prompt ids (B, L) -> action-token features (B, D)."""
        image_embeds = self.image_embeds(self.normalize_image(images))
        embeds, mask, positions = self.text_sequence(image_embeds, text_ids)
        hidden = self.backbone.text_model.model(inputs_embeds=embeds, attention_mask=mask,
                                                position_ids=positions).last_hidden_state
        return hidden[:, -1]

    def decode(self, features: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        """Window of features (B, T, D) and LSTM state -> actions (B, chunk, dim), hn, cn."""
        return self.act_head(features.to(self.action_token.dtype), h0, c0)

    def zero_state(self, batch: int = 1, device=None, dtype=None):
        """Zero (h0, c0) for `decode`."""
        shape = (self.config.lstm_layers, batch, self.config.lstm_hidden)
        dtype = dtype or self.action_token.dtype
        device = device or self.action_token.device
        return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype,
                                                                          device=device)

    def forward(self, window_images: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Reference path: encode every frame of a window (B, T, H, W, 3) and decode it."""
        b, t = window_images.shape[:2]
        frames = window_images.reshape(b * t, *window_images.shape[2:])
        ids = text_ids.repeat_interleave(t, dim=0)
        feats = self.encode_frame(frames, ids).view(b, t, -1)
        h0, c0 = self.zero_state(b)
        return self.decode(feats, h0, c0)[0]

    def parameter_bytes(self) -> int:
        """Bytes of all parameters at their current dtype (the per-step weight traffic floor)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())
