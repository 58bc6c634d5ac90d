"""Agreement with tf-keras-vis 0.8.7 (an independent, eager implementation) on trained models.

Three briefly trained architectures (GAP head; BatchNorm + residual Add; depthwise + Flatten/FC),
target layer named explicitly with ``seek_penultimate_conv_layer=False`` (tf-keras-vis would otherwise
swap a non-conv target such as the Add for the previous conv) and ``ReplaceToLinear`` so that both use
the pre-softmax score. Maps must agree within 1e-3 after per-image min-max. tf-keras-vis is a hard
requirement (pinned in the dev extra): without it these tests fail, naming it.
"""

from __future__ import annotations

import numpy as np
import pytest
from camserve.engine import Explainer
from camserve.records import ItemSpec


@pytest.fixture(scope="session")
def tf_keras_vis() -> tuple[dict, type, type]:
    """The reference tools; a missing tf-keras-vis fails these tests (never skips) saying how to get it.
    Session-scoped and asked for first, so it fails before the models are trained."""
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.layercam import Layercam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError as exc:
        missing = str(exc)
    else:
        return {"gradcam": Gradcam, "layercam": Layercam}, ReplaceToLinear, CategoricalScore
    pytest.fail(f"tf-keras-vis is missing ({missing}): it is pinned in pyproject.toml's dev extra; "
                "`make venv` (or `pip install -c constraints.txt -e '.[server,dev]'`) installs it",
                pytrace=False)


@pytest.mark.parametrize("arch", ["plain_gap", "residual_bn", "flatten_fc"])
def test_matches_tf_keras_vis(tf_keras_vis: tuple[dict, type, type], trained: dict,
                              digits: tuple[np.ndarray, np.ndarray], arch: str) -> None:
    tools, to_linear, categorical_score = tf_keras_vis
    model = trained[arch]
    x = digits[0][:6]
    explainer = Explainer(model, "target", preprocessing="none", max_batch_size=8)
    probs = model.predict(x, verbose=0)
    # The predicted class for half of the images, the runner-up for the others.
    order = np.argsort(-probs, axis=1)
    classes = [int(order[i, i % 2]) for i in range(len(x))]
    for method, tool in tools.items():
        ours = explainer.explain_batch(x, [ItemSpec(method, c) for c in classes])
        viz = tool(model, model_modifier=to_linear(), clone=True)
        ref = np.asarray(
            viz(
                categorical_score(classes),
                x,
                penultimate_layer="target",
                seek_penultimate_conv_layer=False,
                expand_cam=False,
                normalize_cam=True,
            )
        )
        for i, r in enumerate(ours):
            assert not r.maps[0].all_zero, (arch, method, i)
            assert r.maps[0].heatmap.std() > 0.05, "degenerate map: the test would prove nothing"
            np.testing.assert_allclose(r.maps[0].heatmap, ref[i], atol=1e-3, err_msg=f"{arch} {method} {i}")
        np.testing.assert_allclose(np.stack([r.probabilities for r in ours]), probs, atol=1e-5)
