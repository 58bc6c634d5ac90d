"""One vocabulary end to end: the server's words, the engine's registries and the wire's enums agree.

``camserve.vocabulary`` names what a configuration and the engine accept; ``camserve_proto.vocabulary``
derives the wire's names from the .proto enums. A method or colormap added in one place and not the
others fails here, not in a caller's request.
"""

from __future__ import annotations

import numpy as np
import pytest
from camserve import vocabulary as server
from camserve.engine import methods, overlay, preprocess
from camserve.engine.api import _BaseCAM
from camserve_proto import explain_pb2 as pb
from camserve_proto import vocabulary as wire


def test_the_wire_names_exactly_the_servers_methods_and_colormaps() -> None:
    assert tuple(wire.METHODS) == server.METHODS
    assert tuple(wire.COLORMAPS) == server.COLORMAPS
    assert wire.DEFAULTS["method"] in server.METHODS and wire.DEFAULTS["colormap"] in server.COLORMAPS


def test_names_are_derived_from_the_enums_by_the_stated_rule() -> None:
    assert wire.METHODS["gradcam++"] == pb.GRAD_CAM_PLUS_PLUS and wire.METHODS["xgradcam"] == pb.XGRAD_CAM
    assert wire.HEATMAP_SIZES == {"grid": pb.CONV_GRID, "input": pb.MODEL_INPUT, "original": pb.ORIGINAL}
    assert wire.IMAGE_FORMATS == {"png": pb.PNG, "jpeg": pb.JPEG}
    assert wire.DTYPES == {"UINT8": pb.UINT8, "FLOAT32": pb.FLOAT32}
    assert wire.name_of(wire.METHODS, 0, "gradcam") == "gradcam" and wire.name_of(wire.METHODS, 99) is None


def test_the_engine_implements_every_method_and_colormap() -> None:
    assert set(methods.GRADIENT_METHODS) | {"cam", "eigencam"} == set(server.METHODS)
    assert tuple(overlay.COLORMAPS) == server.COLORMAPS
    assert sorted(cls.method for cls in _BaseCAM.__subclasses__()) == sorted(server.METHODS)


@pytest.mark.parametrize("mode", server.PREPROCESSING)
def test_every_preprocessing_mode_is_implemented(mode: str) -> None:
    assert preprocess.check_mode(mode) == mode
    out = preprocess.preprocess_numpy(np.full((1, 2, 2, 3), 255, np.uint8), mode)
    assert out.dtype == np.float32 and out.shape == (1, 2, 2, 3)
