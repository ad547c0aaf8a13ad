"""Logprob formatting shared by the endpoints: token texts, vLLM's prompt_logprobs field and
the top entries of a position."""

from __future__ import annotations

from typing import Any

from fastlm.outputs import Logprob

# vLLM's floor for -inf logprobs: JSON has no infinities.
MIN_LOGPROB = -9999.0


class LogprobFormatting:
    """Context's logprob formatting (needs `self.tokenizer`)."""

    tokenizer: Any

    def token_text(self, token_id: int, lp: Logprob | None, as_ids: bool) -> str:
        if as_ids:
            return f"token_id:{token_id}"
        if lp is not None and lp.decoded_token is not None:
            return lp.decoded_token
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def prompt_logprobs_json(
        self, prompt_ids: list[int], plp: list[dict[int, Logprob] | None] | None, as_ids: bool
    ) -> list[dict[str, Any] | None] | None:
        """vLLM's `prompt_logprobs` field: per position, token id -> {logprob, rank,
        decoded_token}."""
        if plp is None:
            return None
        out: list[dict[str, Any] | None] = []
        for entry in plp:
            if entry is None:
                out.append(None)
                continue
            out.append(
                {
                    str(tok): {
                        "logprob": max(lp.logprob, MIN_LOGPROB),
                        "rank": lp.rank,
                        "decoded_token": self.token_text(tok, lp, as_ids),
                    }
                    for tok, lp in entry.items()
                }
            )
        return out


def top_entries(step: dict[int, Logprob], num: int) -> list[tuple[int, Logprob]]:
    """The `num` most likely tokens of one position, by rank."""
    ranked = [(t, lp) for t, lp in step.items() if lp.rank is not None and 1 <= lp.rank <= num]
    ranked.sort(key=lambda x: x[1].rank or 0)
    return ranked[:num]
