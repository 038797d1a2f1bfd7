"""Label leakage and attribute advantage on the customer's own labelled file.

The registered ``label`` and ``aia`` attacks read named datasets; here the same building blocks
(:func:`~splitpriv.attacks.label.transcript_attack` on a short split training run,
:func:`~splitpriv.attacks.attribute.attribute_inference`) run on slices of the customer's rows.
"""

from __future__ import annotations

import random


def label_leakage(evaluation, options, limit: int) -> dict:
    """The label attack on a short split training run over at most ``limit`` of the customer's labelled rows, with
    ``options`` (the ``label`` attack's: head, label DP, tuning method, batch size, epochs). A quarter of the rows
    (at least eight) stand for the vendor's public labelled data of the task: its prior and floor."""
    from splitpriv.attacks.label import split_public, transcript_attack
    from splitpriv.parts import Head

    data = evaluation.data
    n_public = max(8, len(data) // 4)
    if len(data) - n_public < 4:
        raise ValueError(f"it needs at least 12 labelled rows, the file has {len(data)}")
    rows, public = split_public(data, min(int(limit), len(data) - n_public), n_public, evaluation.seed)
    n_labels = data.num_labels
    run = evaluation.training_run(rows.texts, rows.labels, num_labels=n_labels, head=options.head,
                                  method=options.method, batch_size=options.batch_size, epochs=options.epochs,
                                  label_dp_epsilon=options.label_dp_epsilon)
    shipped = evaluation.shipped_model(n_labels)
    selected = run.customer.cti
    result = transcript_attack(
        run.messages, run.labels_per_step, evaluation.knowledge(public_text=False, loaded=shipped),
        head=options.head, num_labels=n_labels, public_texts=public.texts, public_labels=public.labels,
        whitebox_head=Head(shipped[0]).eval() if options.head == "customer" else None,
        noise_scale_fn=selected.noise_scale if selected is not None else None, seed=evaluation.seed)
    out = {**result.to_dict(), "head": options.head, "label_dp_epsilon": options.label_dp_epsilon,
           "n_rows": len(rows), "n_public": len(public), "num_labels": n_labels}
    if options.label_dp_epsilon is not None:
        from splitpriv.privacy.label_dp import keep_probability

        out["expected_rr_accuracy"] = keep_probability(float(options.label_dp_epsilon), n_labels)
    return out


def attribute_advantage(evaluation, column: str) -> dict:
    """The attribute attack on ``column``: the vendor trains on half of the customer's rows (as if it held a
    labelled sample of the same population) and infers the attribute of the other half."""
    from splitpriv.attacks.attribute import attribute_inference

    data = evaluation.data
    values = data.attributes[column]
    keep = [i for i, v in enumerate(values) if v != ""]
    random.Random(evaluation.seed).shuffle(keep)
    half = len(keep) // 2
    aux, victims = sorted(keep[:half]), sorted(keep[half:])
    if len({values[i] for i in keep}) < 2 or min(len(aux), len(victims)) < 2:
        raise ValueError(f"attribute {column!r} needs at least two values and four rows with a value")
    scale = evaluation.contributing.noise_scale if evaluation.contributing is not None else None
    result = attribute_inference(
        evaluation.knowledge(public_text=False), [data.texts[i] for i in aux], [values[i] for i in aux],
        [data.texts[i] for i in victims], [values[i] for i in victims], seed=evaluation.seed,
        aux_noise_scale_fn=scale, victim_noise_scale_fn=scale)
    return {**result.to_dict(), "attribute": column, "n_aux": len(aux), "n_victims": len(victims)}
