"""The served model's requests, each standing alone: the Python-backend model behind ``mrdl serve`` and
the front model of ``mrdl triton-repo``.

``tritonserver`` (any stock server with the Python backend and ``mrdl_runtime`` installed in its
Python) loads :class:`TritonPythonModel` from the repository's ``model.py``; each instance opens its
own :class:`mrdl_runtime.Segmenter`, so preprocessing, tiling, resize-back and threshold are the
runtime's own. The request contract:

* input ``image``: UINT8 ``[b, H, W, 3]`` (raw RGB); parameters: the ``request=True`` fields of
  :class:`PredictOptions` spelled as on the command line (``tile``, ``overlap``, ``blend``);
* outputs ``mask`` UINT8 ``[b, H, W]`` at the image's own size, ``tiled`` BOOL ``[b, 1]``,
  ``probabilities`` FP32 ``[b, C, H, W]`` (computed only when asked for).

Every request of a dynamic batch is checked by itself first (:func:`check_request`: dtype and
shape, empty images, pixels per request, the options' own field rules, an unknown parameter, the
tiled windows it would plan) and a bad one gets its own ``INVALID_ARG`` error (HTTP 400 / gRPC
INVALID_ARGUMENT) of one line; the others run. The good ones run in parts of at most
``max_pixels_in_flight / instances`` request pixels (default: one largest request), so a large batch
never holds more at once; a part that fails in the model is run again request by request, so one
failing request does not fail the others (its error is one line, ``INTERNAL``, never a traceback). In a batch of several parts each
request is answered through its own response sender as soon as its part finishes, so a part's outputs
(a 4096 x 4096 request's probabilities are 128 MB) leave the backend's shared memory before the next
part runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import MrdlError, OptionsError
from .options import PredictOptions
from .tiling import padded_to_window, resampled_size, should_tile, window_count

REQUEST_PARAMETERS = tuple(PredictOptions().request_parameters())
INVALID, INTERNAL = "INVALID_ARG", "INTERNAL"


class RequestRefused(MrdlError, ValueError):
    """One request that cannot be answered; ``code`` is the Triton error code its response carries."""

    def __init__(self, message: str, code: str = INVALID) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (``ServeOptions``' limits, read by each instance)."""

    max_pixels: int  # pixels per request, all its images together
    max_side: int
    max_windows: int  # tiled windows per request, all its images together
    pixels_in_flight: int  # request pixels one instance works on at once


@dataclass
class Job:
    """One checked request: its images ``(b, H, W, 3)`` uint8, its options and whether it wants probabilities."""

    images: np.ndarray
    options: PredictOptions
    wants_probabilities: bool

    @property
    def pixels(self) -> int:
        return int(np.prod(self.images.shape[:3]))


def planned_windows(size: tuple[int, int], source_size: tuple[int, int], model_size: tuple[int, int],
                    overlap: float) -> tuple[int, int]:
    """(windows, resampled pixels) of one tiled image, counted from the axes (no window list is built)."""
    resampled = resampled_size(size, source_size, model_size)
    padded = padded_to_window(resampled, model_size)
    counts = [window_count(p, m, overlap) for p, m in zip(padded, model_size)]
    return counts[0] * counts[1], resampled[0] * resampled[1]


def check_request(images: np.ndarray | None, parameters: Mapping[str, Any] | None, defaults: PredictOptions,
                  manifest, limits: Limits, wants_probabilities: bool) -> Job:
    """One request made a :class:`Job`, or :class:`RequestRefused` naming its first problem."""
    if images is None:
        raise RequestRefused("the request has no input 'image' (UINT8 [batch, height, width, 3], RGB)")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise RequestRefused(f"input 'image' must be UINT8 [batch, height, width, 3] (RGB); got "
                             f"{images.dtype} {list(images.shape)}")
    count, height, width = images.shape[:3]
    if count == 0 or height == 0 or width == 0:
        raise RequestRefused(f"input 'image' is empty ({count} images of {height}x{width}); expected at least one "
                             "image of 1x1 pixels")
    if max(height, width) > limits.max_side:
        raise RequestRefused(f"input 'image' is {height}x{width}: over this server's limit of {limits.max_side} "
                             "pixels per side (mrdl serve --max-side)")
    if count * height * width > limits.max_pixels:
        raise RequestRefused(f"the request holds {count} images of {height}x{width} = {count * height * width} "
                             f"pixels: over this server's limit of {limits.max_pixels} pixels per request "
                             "(mrdl serve --max-pixels); send fewer or smaller images")
    unknown = sorted(set(parameters or {}) - set(REQUEST_PARAMETERS))
    if unknown:
        raise RequestRefused(f"unknown request parameter {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(REQUEST_PARAMETERS)}")
    try:
        options = defaults.from_request(parameters)
        tiled = should_tile((height, width), manifest.source_size, options.tile)
    except (OptionsError, ValueError) as exc:
        raise RequestRefused(str(exc)) from None
    if tiled:
        windows, resampled = planned_windows((height, width), manifest.source_size, manifest.size, options.overlap)
        if count * windows > limits.max_windows or resampled > limits.max_pixels:
            raise RequestRefused(f"tiling the request's {count} images of {height}x{width} with overlap "
                                 f"{options.overlap:g} plans {count * windows} windows ({resampled} pixels each at "
                                 f"the training scale): over this server's limit of {limits.max_windows} windows "
                                 "(mrdl serve --max-windows); use a smaller overlap or tile=false")
    return Job(images, options, wants_probabilities)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _parts(jobs: Sequence[tuple[int, Job]], budget: int) -> list[list[tuple[int, Job]]]:
    """Consecutive runs of ``jobs`` with the same options whose pixels add up to at most ``budget``."""
    parts: list[list[tuple[int, Job]]] = []
    pixels = 0
    for index, job in jobs:
        last = parts[-1] if parts else None
        if last and last[0][1].options == job.options and pixels + job.pixels <= budget:
            last.append((index, job))
            pixels += job.pixels
        else:
            parts.append([(index, job)])
            pixels = job.pixels
    return parts


def plan_parts(jobs: Sequence[Job | RequestRefused], pixels_in_flight: int) -> list[list[tuple[int, Job]]]:
    """The good jobs as ``(index, job)`` in the parts they run in: the same options together, at most
    ``pixels_in_flight`` request pixels each (one job alone may be larger)."""
    good = sorted(((i, job) for i, job in enumerate(jobs) if isinstance(job, Job)),
                  key=lambda item: hash(item[1].options))  # requests with the same options run together
    return _parts(good, pixels_in_flight)


def answer_jobs(segmenter, jobs: Sequence[Job | RequestRefused],
                parts: list[list[tuple[int, Job]]]) -> Iterator[tuple[int, dict | RequestRefused]]:
    """``(index, outputs or error)`` of each job as soon as it is known: refused requests first, then each of
    ``parts`` (:func:`plan_parts` of ``jobs``) as it finishes, so a caller can send those answers and drop them
    before the next part runs. Outputs: ``mask``, ``tiled``, ``probabilities`` when asked for; a part failing in
    the model is run again request by request, so only the failing request fails."""
    for index, job in enumerate(jobs):
        if isinstance(job, RequestRefused):
            yield index, job
    for part in parts:
        try:
            outputs = _run(segmenter, [job for _, job in part])
        except Exception as exc:  # noqa: BLE001 - one request's failure must not fail the others
            if len(part) == 1:
                yield part[0][0], RequestRefused(f"the model failed on this request: {_one_line(exc)}", INTERNAL)
                continue
            outputs = []
            for index, job in part:  # run apart: only the failing request fails
                try:
                    outputs.extend(_run(segmenter, [job]))
                except Exception as single:  # noqa: BLE001
                    outputs.append(RequestRefused(f"the model failed on this request: {_one_line(single)}", INTERNAL))
        for (index, _), output in zip(part, outputs):
            yield index, output
        del outputs  # this part's outputs are answered; not held while the next part runs


def run_jobs(segmenter, jobs: Sequence[Job | RequestRefused], pixels_in_flight: int) -> list[dict | RequestRefused]:
    """The outputs of each job (:func:`answer_jobs`) in the jobs' order; refused requests stay refused and never
    stop the others."""
    results: list[dict | RequestRefused] = [None] * len(jobs)  # type: ignore[list-item]
    for index, result in answer_jobs(segmenter, jobs, plan_parts(jobs, pixels_in_flight)):
        results[index] = result
    return results


def _stacked(arrays: list[np.ndarray], dtype) -> np.ndarray:
    """``(b, ...)`` of ``b`` arrays; one array is viewed, not copied (a 4096 x 4096 request's probabilities are
    128 MB)."""
    if len(arrays) == 1:
        return arrays[0].astype(dtype, copy=False)[None]
    return np.stack(arrays).astype(dtype, copy=False)


def _run(segmenter, jobs: Sequence[Job]) -> list[dict]:
    want = any(job.wants_probabilities for job in jobs)
    images = [image for job in jobs for image in job.images]
    predictions = segmenter.predict_batch(images, jobs[0].options.with_fields(with_probabilities=want))
    del images
    outputs, start = [], 0
    for job in jobs:
        chunk = predictions[start:start + len(job.images)]
        predictions[start:start + len(chunk)] = [None] * len(chunk)  # each map held once, by this job's output
        start += len(chunk)
        output = {"mask": _stacked([p.mask for p in chunk], np.uint8),  # (b, H, W)
                  "tiled": np.array([[p.tiled] for p in chunk], dtype=bool)}  # (b, 1)
        if job.wants_probabilities:
            output["probabilities"] = _stacked([p.probabilities for p in chunk], np.float32)  # (b, C, H, W)
        outputs.append(output)
    return outputs


def config_parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """A Triton model config's ``parameters`` as plain strings."""
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


def _response(pb_utils, result: dict | RequestRefused):
    """The Python backend's response carrying ``result``: its outputs, or its error with its Triton code."""
    if isinstance(result, RequestRefused):
        code = getattr(pb_utils.TritonError, result.code, pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code))
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, value) for name, value in result.items()])


class TritonPythonModel:
    """The Python-backend model: ``initialize`` opens one Segmenter for this instance, ``execute`` answers
    each request of a dynamic batch by itself (its outputs, or its own error)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        from .manifest import load_manifest
        from .segmenter import Segmenter
        from .serving import ServeOptions, instance_threads

        config = json.loads(args["model_config"])
        parameters = config_parameters(config)
        options = ServeOptions.from_json(parameters["serve_options"])
        model_dir = Path(parameters["model_dir"])
        if not model_dir.is_absolute():  # a repository written by mrdl triton-repo: beside model.py
            model_dir = Path(args["model_repository"]) / args["model_version"] / model_dir
        manifest = load_manifest(model_dir)
        if parameters.get("export_id") and parameters["export_id"] != manifest.export_id:
            raise MrdlError(f"{model_dir} holds export {manifest.export_id}, but config.pbtxt names "
                            f"{parameters['export_id']}: rewrite the repository with mrdl triton-repo")
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group") or [{}]) or 1
        load = options.load.with_fields(threads=instance_threads(options.load.threads, instances))
        self.segmenter = Segmenter.load(model_dir, load)
        self.defaults, self.manifest = options.predict, manifest
        # unset: one largest request per instance; set: its share, never below one request (config.pbtxt may count
        # more instances than the ServeOptions that were checked)
        in_flight = (options.predict.max_pixels if options.max_pixels_in_flight is None
                     else max(options.predict.max_pixels, options.max_pixels_in_flight // instances))
        self.limits = Limits(max_pixels=options.predict.max_pixels, max_side=options.max_side,
                             max_windows=options.max_windows, pixels_in_flight=in_flight)

    def _job(self, request) -> Job | RequestRefused:
        import triton_python_backend_utils as pb_utils

        try:
            tensor = pb_utils.get_input_tensor_by_name(request, "image")
            parameters = json.loads(request.parameters() or "{}")
            requested = list(request.requested_output_names() or [])
            wants = not requested or "probabilities" in requested  # Triton's rule: none named means all
            return check_request(None if tensor is None else tensor.as_numpy(), parameters, self.defaults,
                                 self.manifest, self.limits, wants)
        except RequestRefused as refused:
            return refused
        except Exception as exc:  # noqa: BLE001 - a malformed request is that request's error only
            return RequestRefused(f"malformed request: {_one_line(exc)}")

    def execute(self, requests: list) -> list | None:
        """Each request's response. A batch that runs in several parts (:func:`plan_parts`: large requests)
        answers each request through its own response sender as soon as its part finishes, so its outputs leave
        the backend before the next part runs; a batch of one part returns its responses, which frees the
        instance at once (a sender's answer leaves the instance busy about 0.1 s more)."""
        import triton_python_backend_utils as pb_utils

        jobs = [self._job(request) for request in requests]
        parts = plan_parts(jobs, self.limits.pixels_in_flight)
        answers = answer_jobs(self.segmenter, jobs, parts)
        if len(parts) <= 1:
            responses: list = [None] * len(requests)
            for index, result in answers:
                responses[index] = _response(pb_utils, result)
            return responses
        for index, result in answers:
            response = _response(pb_utils, result)
            del result
            requests[index].get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            del response
        return None

    def finalize(self) -> None:
        segmenter = getattr(self, "segmenter", None)
        if segmenter is not None:
            segmenter.close()

