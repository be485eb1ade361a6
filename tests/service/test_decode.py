"""Gray <-> RGB mismatches, converted or refused as ``channel_mismatch`` says, for encoded images and tensors alike."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from service.artifact import InputSpec
from service.decode import convert_tensor_channels, decode_image, tensor_to_images
from service.errors import ServiceError
from service.settings import Settings
from tests.conftest import GRAY8, RGB8

from .serving import LiveServer, create_app, npy, png, random_images, reference_stats, settings

GRAY_SPEC = InputSpec(shape=GRAY8, color_mode="L")
RGB_SPEC = InputSpec(shape=RGB8, color_mode="RGB")


def encoded(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_tensor_luma_is_pillows_to_the_last_bit():
    rgb = np.random.default_rng(0).integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    ours = convert_tensor_channels(rgb, 1)[..., 0]
    pillow = np.stack([np.asarray(Image.fromarray(x, "RGB").convert("L")) for x in rgb])
    np.testing.assert_array_equal(ours, pillow)
    gray = rgb[..., :1]
    np.testing.assert_array_equal(convert_tensor_channels(gray, 3), np.repeat(gray, 3, axis=3))


def test_setting_default_follows_resize():
    assert not Settings().convert_channels and Settings(resize=True).convert_channels
    assert Settings(channel_mismatch="convert").convert_channels
    assert not Settings(resize=True, channel_mismatch="refuse").convert_channels


@pytest.mark.parametrize(
    "array, mode, spec",
    [
        (np.full((8, 8), 90, np.uint8), "L", RGB_SPEC),
        (np.full((8, 8, 3), 90, np.uint8), "RGB", GRAY_SPEC),
    ],
)
def test_refused_mismatch_names_the_mode_the_model_takes(array, mode, spec):
    with pytest.raises(ServiceError) as refused:
        decode_image(encoded(array, mode), 3, spec, 10_000, resize=False, convert_channels=False)
    assert refused.value.status == 422 and refused.value.code == "wrong_channels" and refused.value.index == 3
    assert f"takes {spec.color_mode}" in refused.value.message and "OODGATE_CHANNEL_MISMATCH" in refused.value.message
    with pytest.raises(ServiceError) as tensor:
        tensor_to_images(array[None] if mode == "L" else array[None], spec, resize=False, convert_channels=False)
    assert tensor.value.status == 422 and tensor.value.code == "wrong_channels"


def test_converted_mismatch_matches_pillow():
    gray = random_images(1, seed=1, shape=GRAY8)[0, 0]
    as_rgb = decode_image(encoded(gray, "L"), 0, RGB_SPEC, 10_000, resize=False, convert_channels=True)
    np.testing.assert_array_equal(as_rgb, np.repeat(gray[None], 3, axis=0))
    rgb = random_images(1, seed=2, shape=RGB8)[0].transpose(1, 2, 0)
    as_gray = decode_image(encoded(rgb, "RGB"), 0, GRAY_SPEC, 10_000, resize=False, convert_channels=True)
    np.testing.assert_array_equal(as_gray[0], np.asarray(Image.fromarray(rgb, "RGB").convert("L")))
    # a tensor of the same pixels gives the same model input as the PNG
    np.testing.assert_array_equal(tensor_to_images(rgb[None], GRAY_SPEC, False, True)[0], as_gray)


def test_a_gray_palette_image_is_gray_and_a_colour_one_is_colour():
    gray = random_images(1, seed=7, shape=GRAY8)[0, 0]
    gif = io.BytesIO()
    Image.fromarray(gray, "L").save(gif, format="GIF")  # GIF: always a palette image, here of grays
    as_gray = decode_image(gif.getvalue(), 0, GRAY_SPEC, 10_000, resize=False, convert_channels=False)
    np.testing.assert_array_equal(as_gray[0], gray)
    colour = Image.fromarray(random_images(1, seed=8, shape=RGB8)[0].transpose(1, 2, 0), "RGB").quantize(16)
    buffer = io.BytesIO()
    colour.save(buffer, format="PNG")
    with pytest.raises(ServiceError, match="colour"):
        decode_image(buffer.getvalue(), 0, GRAY_SPEC, 10_000, resize=False, convert_channels=False)
    as_rgb = decode_image(buffer.getvalue(), 0, RGB_SPEC, 10_000, resize=False, convert_channels=False)
    np.testing.assert_array_equal(as_rgb, np.asarray(colour.convert("RGB")).transpose(2, 0, 1))


def test_alpha_is_composited_on_white_and_deep_modes_are_refused():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :3] = (10, 20, 30)
    rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent black
    image = decode_image(encoded(rgba, "RGBA"), 0, RGB_SPEC, 10_000, resize=False, convert_channels=False)
    assert (image[:, :4] == np.array([10, 20, 30])[:, None, None]).all() and (image[:, 4:] == 255).all()
    deep = io.BytesIO()
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(deep, format="PNG")
    with pytest.raises(ServiceError) as refused:
        decode_image(deep.getvalue(), 0, GRAY_SPEC, 10_000, resize=False, convert_channels=True)
    assert refused.value.status == 422 and refused.value.code == "unsupported_color_mode"


@pytest.mark.slow
@pytest.mark.parametrize("mismatch", ["refuse", "convert"])
def test_mismatch_over_http_is_never_a_5xx(mixed_models_root, mismatch):
    """Gray images and tensors to the RGB model and RGB ones to the gray model, through /score and /v2."""
    gray = random_images(2, seed=3, shape=GRAY8)
    rgb = random_images(2, seed=4, shape=RGB8)
    rgb_hwc = np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))
    cases = [  # model, request kind, payload, what the model should see when converting
        ("rgb8", "png", gray, np.repeat(gray, 3, axis=1)),
        ("rgb8", "npy", gray[:, 0], np.repeat(gray, 3, axis=1)),
        ("gray8", "png", rgb, convert_tensor_channels(rgb_hwc, 1).transpose(0, 3, 1, 2)),
        ("gray8", "v2", rgb_hwc, convert_tensor_channels(rgb_hwc, 1).transpose(0, 3, 1, 2)),
    ]
    app = create_app(settings(mixed_models_root, channel_mismatch=mismatch))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        for model, kind, payload, seen in cases:
            if kind == "png":
                files = [("files", (f"{i}.png", png(x), "image/png")) for i, x in enumerate(payload)]
                response = client.post(f"/score?model={model}", files=files)
            elif kind == "npy":
                headers = {"content-type": "application/x-npy"}
                response = client.post(f"/score?model={model}", content=npy(payload), headers=headers)
            else:
                tensor = {"name": "images", "datatype": "UINT8", "shape": list(payload.shape)}
                response = client.post(
                    f"/v2/models/{model}/infer", json={"inputs": [{**tensor, "data": payload.ravel().tolist()}]}
                )
            if mismatch == "refuse":
                assert response.status_code == 422, (model, kind, response.text)
                assert f"takes {'RGB' if model == 'rgb8' else 'L'}" in response.text
                continue
            assert response.status_code == 200, (model, kind, response.text)
            body = response.json()
            got = body["results"] if kind != "v2" else None
            bpd = [r["bpd"] for r in got] if got else next(o for o in body["outputs"] if o["name"] == "bpd")["data"]
            np.testing.assert_allclose(bpd, reference_stats(mixed_models_root, seen, name=model)["bpd"], rtol=1e-5)
