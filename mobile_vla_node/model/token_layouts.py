"""Token layouts: how a frame's image tokens, prompt ids and action token form Kosmos-2's input.

Three named layouts (node parameter ``token_layout``; ``auto`` takes the checkpoint's, see
`choose_layout`). Facts and line numbers are from minuum/RoboVLMs at commit 8d65987 (details and
the measured consequences in docs/CHECKPOINTS.md):

``robovlms_kosmos`` -- the team's code as it runs. ``BaseRoboVLM.forward_continuous``
  (robovlms/model/backbone/base_backbone.py) first calls Kosmos-2 with ``inputs_embeds`` only
  (line 1214); stock Kosmos-2 raises ``ValueError`` without ``pixel_values``/``image_embeds``, so
  the fallback branch (lines 1223-1385) runs, in training and at inference:

  * the prompt ids as tokenized by their server (``<s> ... </s>``, padded with ``<pad>`` to
    ``tokenizer.max_text_len``, Mobile_VLA/inference_server.py ``_tokenize_instruction``; padded
    further with id 0 to ``latent_query_num`` if shorter, line 1286) are embedded (line 1315);
  * ``image_embeds_position_mask[:, :latent_query_num] = True`` (line 1301): Kosmos-2 *overwrites*
    the first ``latent_query_num`` positions with the image tokens;
  * the tokenizer's attention mask is kept: a position is attended only where the prompt had a
    real token, image-overwritten positions included;
  * the action token is appended after the padding with mask 1 (lines 1325-1357; Kosmos-2 is
    called at line 1366). Kosmos-2 numbers positions from ``inputs_embeds`` (``padding_idx +
    1`` upwards, whatever the mask), so it sits at position ``padded_len + 2``. Its last hidden
    state is the feature.

  Masked keys contribute exactly nothing to attended positions (causal attention, per-token
  layer norms), so the sequence built here keeps only the attended positions with their
  original position ids: ``image[:min(n, latent)]``, ``embed(ids[latent:])``, ``action`` --
  equal to the padded sequence (`team_sequence`, checked by the tests) at a fraction of its
  length. A prompt of ``n <= latent + 1`` ids (``</s>`` last) loses every instruction token:
  the actions depend on the instruction only through its token count.

``robovlms_patched`` -- the layout RoboVLMs intended: with Kosmos-2's forward patched to take
  ``inputs_embeds`` (upstream RoboVLMs tools/modeling_kosmos2.py, ``Kosmos2ForConditionalGeneration
  .forward`` line 2148, which skips the vision tower when ``pixel_values`` is None) the first call
  (base_backbone.py line 1214) succeeds. ``merge_multi_modal_input`` (line 380) inserts the image
  tokens after ``<s>`` (``insert_idx=bos_offset``, line 1136; no ``<image>`` tags: RoboKosMos has
  no start/end image ids), then the action token before the last padded position
  (``insert_idx = len - eos_offset``, line 1179), mask 1; positions count from 2 over the padded
  sequence. Every prompt token is seen.

``package`` -- this package's own checkpoints (the demo policy):
  ``<s> <image> [image] </image> prompt [action]``, full attention (padding masked when the config
  pads), positions counted over that sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

KOSMOS, PATCHED, PACKAGE = "robovlms_kosmos", "robovlms_patched", "package"
LAYOUTS = (KOSMOS, PATCHED, PACKAGE)
CHOICES = ("auto",) + LAYOUTS
TEAM_LAYOUTS = (KOSMOS, PATCHED)
TEAM_COMMIT = "minuum/RoboVLMs 8d65987"
SOURCES = {
    KOSMOS: "minuum/RoboVLMs robovlms/model/backbone/base_backbone.py lines 1214-1385 (the "
            "fallback branch taken because stock Kosmos-2 needs pixel_values)",
    PATCHED: "minuum/RoboVLMs base_backbone.py lines 1131-1222 with Kosmos-2 patched to take "
             "inputs_embeds (tools/modeling_kosmos2.py line 2148)",
    PACKAGE: "mobile_vla_node: <s> <image> [image] </image> prompt [action], full attention",
}
BLIND_TEXT = "the prompt is overwritten by image tokens; commands do not change the actions"


class TokenLayoutError(ValueError):
    """An unknown layout name or a layout that cannot be used with this checkpoint."""


@dataclass(frozen=True)
class Visibility:
    """How much of one prompt a layout lets the action token see."""

    layout: str
    n_ids: int             # prompt ids, <s> and </s> included
    overwritten: int       # prompt positions replaced by image tokens
    blind: bool            # no instruction token reaches the action token

    def describe(self) -> str:
        """One line for logs, diagnostics and inspect."""
        if self.layout != KOSMOS:
            return f"sees all {self.n_ids} prompt ids ({self.layout})"
        if self.blind:
            tail = ", only its </s> survives" if self.n_ids > self.overwritten else ""
            return (f"instruction-blind: {BLIND_TEXT} ({self.overwritten} of its {self.n_ids} "
                    f"ids are image positions{tail}; only its length counts)")
        return (f"partly seen: the first {self.overwritten} of {self.n_ids} prompt ids are "
                f"overwritten by image tokens, ids {self.overwritten}..{self.n_ids - 1} reach "
                "the action token")


def check_layout(name: str, allow_auto: bool = True) -> str:
    """``name`` if it is a layout (or ``auto``); `TokenLayoutError` naming the choices."""
    choices = CHOICES if allow_auto else LAYOUTS
    if name not in choices:
        raise TokenLayoutError(f"token_layout {name!r} is not one of {list(choices)}")
    return name


def visibility(layout: str, n_ids: int, latent: int) -> Visibility:
    """What the action token sees of an ``n_ids``-id prompt (``</s>`` last) in ``layout``.

    ``robovlms_kosmos``: positions ``0..latent-1`` hold image tokens, so ids ``latent..n-1``
    survive; the instruction (which ends before ``</s>``) is lost when ``n - 1 <= latent``.
    """
    check_layout(layout, allow_auto=False)
    if layout != KOSMOS:
        return Visibility(layout, n_ids, 0, False)
    return Visibility(layout, n_ids, min(n_ids, latent), n_ids - 1 <= latent)


def blind_limit(latent: int) -> int:
    """Longest ``robovlms_kosmos`` prompt (ids with ``<s>``/``</s>``) that is instruction-blind."""
    return latent + 1


def padded_length(max_text_len: int, latent: int) -> int:
    """Their sequence length before the action token: ``max_text_len``, at least ``latent``."""
    return max(int(max_text_len), int(latent))


def required_positions(layout: str, max_text_len: int, latent: int, n_prefix: int = 2) -> int:
    """Rows the sinusoidal position table needs for the longest prompt of ``layout``.

    Kosmos-2 uses ``padding_idx + 1 + index`` (padding_idx 1), so index i needs row i + 2.
    """
    if layout == KOSMOS:
        return padded_length(max_text_len, latent) + 3
    if layout == PATCHED:
        return latent + int(max_text_len) + 2
    return n_prefix + latent + 2 + int(max_text_len) + 2


def build_sequence(layout: str, *, embed, image_embeds, text_ids, action, prefix_ids=None,
                   image_end_ids=None, pad_id: int = 1, max_text_len: int = 0,
                   padding_idx: int = 1):
    """(inputs_embeds (B, N, D), attention_mask (B, N) or None, position_ids (B, N) or None).

    ``embed``: the text embedding module; ``image_embeds`` (B, latent, D); ``text_ids`` (B, n)
    as the layout's tokenizer gives them (team layouts: ``<s> ... </s>``, unpadded);
    ``action`` (D,). The action token is always last.
    """
    import torch

    batch, n = text_ids.shape
    latent = image_embeds.shape[1]
    dtype = image_embeds.dtype
    act = action.to(dtype).view(1, 1, -1).expand(batch, -1, -1)
    if layout == PACKAGE:
        prefix = embed(prefix_ids).unsqueeze(0).expand(batch, -1, -1)
        image_end = embed(image_end_ids).unsqueeze(0).expand(batch, -1, -1)
        embeds = torch.cat([prefix, image_embeds, image_end, embed(text_ids), act], dim=1)
        n_fixed = prefix.shape[1] + latent + 1
        ones = torch.ones(batch, n_fixed, dtype=torch.long, device=text_ids.device)
        mask = torch.cat([ones, (text_ids != pad_id).long(), ones[:, :1]], dim=1)
        return embeds, mask, None
    start = padding_idx + 1
    device = text_ids.device
    if layout == KOSMOS:
        # Attended positions only: image tokens where the prompt had ids, then the prompt's tail
        # (written as a selection, so no graph holds a zero-length tensor for short prompts).
        words = embed(text_ids).to(dtype)
        stacked = torch.cat([image_embeds, words], dim=1)[:, :n]       # image token i, i < latent
        is_image = (torch.arange(n, device=device) < latent).view(1, -1, 1)
        embeds = torch.cat([torch.where(is_image, stacked, words), act], dim=1)
        prompt_pos = torch.arange(n, device=device) + start
        action_pos = torch.full((1,), padded_length(max_text_len, latent) + start,
                                dtype=torch.long, device=device)
    elif layout == PATCHED:
        # <s>, image tokens, the prompt after <s> up to the last padded slot, then the action.
        last = int(max_text_len) - 1
        body = text_ids[:, 1:last]
        embeds = torch.cat([embed(text_ids[:, :1]).to(dtype), image_embeds,
                            embed(body).to(dtype), act], dim=1)
        prompt_pos = torch.arange(embeds.shape[1] - 1, device=device) + start
        action_pos = torch.full((1,), latent + last + start, dtype=torch.long, device=device)
    else:
        raise TokenLayoutError(f"token_layout {layout!r} is not one of {list(LAYOUTS)}")
    positions = torch.cat([prompt_pos, action_pos]).unsqueeze(0).repeat(batch, 1)
    return embeds, None, positions


def team_sequence(layout: str, *, embed, image_embeds, padded_ids, padded_mask, action):
    """The team's full sequence, literally: (inputs_embeds, attention_mask), positions 2, 3, ...

    For tests and documentation (`build_sequence` must give the same action feature).
    ``padded_ids``/``padded_mask``: their server's tokenizer output (padded to max_text_len).
    """
    import torch

    batch = padded_ids.shape[0]
    latent = image_embeds.shape[1]
    act = action.to(image_embeds.dtype).view(1, 1, -1).expand(batch, -1, -1)
    one = torch.ones(batch, 1, dtype=padded_mask.dtype)
    if layout == KOSMOS:
        ids, mask = padded_ids, padded_mask
        if ids.shape[1] < latent:                      # base_backbone.py line 1286
            extra = latent - ids.shape[1]
            ids = torch.cat([ids, torch.zeros(batch, extra, dtype=ids.dtype)], dim=1)
            mask = torch.cat([mask, torch.zeros(batch, extra, dtype=mask.dtype)], dim=1)
        embeds = embed(ids).clone()
        position = torch.zeros(ids.shape, dtype=torch.bool)
        position[:, :latent] = True                     # base_backbone.py line 1301
        embeds[position] = image_embeds.reshape(-1, image_embeds.shape[-1]).to(embeds.dtype)
        return torch.cat([embeds, act], dim=1), torch.cat([mask, one], dim=1)
    if layout == PATCHED:
        words = embed(padded_ids)
        embeds = torch.cat([words[:, :1], image_embeds, words[:, 1:]], dim=1)
        mask = torch.cat([padded_mask[:, :1], one.expand(-1, latent), padded_mask[:, 1:]], dim=1)
        at = embeds.shape[1] - 1                         # insert_idx = len - eos_offset
        embeds = torch.cat([embeds[:, :at], act, embeds[:, at:]], dim=1)
        mask = torch.cat([mask[:, :at], one, mask[:, at:]], dim=1)
        return embeds, mask
    raise TokenLayoutError(f"team_sequence: {layout!r} is not a team layout")


def action_index(layout: str, seq_len: int) -> int:
    """Index of the action token in `team_sequence`'s output."""
    return seq_len - 2 if layout == PATCHED else seq_len - 1
