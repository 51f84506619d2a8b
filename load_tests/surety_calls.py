"""The requests the locust profiles make in common, on a locust client (bodies from the kit's
surety_kit.payloads)."""

from __future__ import annotations

from locust.contrib.fasthttp import FastHttpSession

from surety_kit.payloads import JSON, digits_binary


def score(client: FastHttpSession, model: str, body: str, name: str) -> None:
    """A JSON ``/score``; a 200 without ``predicted_label`` counts as a failure."""
    with client.post(
        f"/v2/models/{model}/score", data=body, headers=JSON, name=name, catch_response=True
    ) as response:
        if response.status_code == 200 and "predicted_label" not in response.text:
            response.failure("no predicted_label in the score response")


def infer_binary(client: FastHttpSession, model: str, rows: int, name: str) -> None:
    """An ``/infer`` of ``rows`` digits through the binary tensor extension."""
    body, headers = digits_binary(rows)
    # FastHttpSession sends bytes as they are; its annotation only names str and dict.
    client.post(
        f"/v2/models/{model}/infer",
        data=body,  # type: ignore[arg-type]
        headers=headers,
        name=name,
    )
