"""Text generation in model.py: sampling, seeds, stop strings, streaming text, limits, usage,
parameter errors, and the decoupled Triton entry point (with a stand-in for the module that
only exists inside Triton's python-backend stub). The engine runs a tiny random Llama exported
by the optimizer (fp32, seconds); the server itself is tests/slow/test_generation_real.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flotilla.triton import python_model as pm

from .optimize_fixtures import tiny_llama
from .test_optimize import run_cli

# ---------------------------------------------------------------- sampling math


def test_top_k_mask_keeps_the_k_highest() -> None:
    logits = np.array([1.0, 5.0, 3.0, 4.0])
    assert pm.top_k_mask(logits, 2).tolist() == [False, True, False, True]
    assert pm.top_k_mask(logits, 1).tolist() == [False, True, False, False]
    assert pm.top_k_mask(logits, 0).all() and pm.top_k_mask(logits, 4).all() and pm.top_k_mask(logits, 9).all()


def test_top_p_mask_keeps_the_smallest_set_reaching_p() -> None:
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    assert pm.top_p_mask(probs, 0.8).tolist() == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8
    assert pm.top_p_mask(probs, 0.81).tolist() == [False, True, True, True]
    assert pm.top_p_mask(probs, 0.1).tolist() == [False, True, False, False]  # the top token always stays
    assert pm.top_p_mask(probs, 1.0).all()


def test_sampling_distribution_applies_temperature_then_filters() -> None:
    logits = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    plain = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(pm.sampling_distribution(logits, pm.Sampling(temperature=1.0)), plain)
    sharp = pm.sampling_distribution(logits, pm.Sampling(temperature=0.5))
    assert np.allclose(sharp, np.exp(2 * logits) / np.exp(2 * logits).sum())
    assert sharp[0] > plain[0]
    top2 = pm.sampling_distribution(logits, pm.Sampling(temperature=1.0, top_k=2))
    assert top2[2:].tolist() == [0.0, 0.0] and np.isclose(top2.sum(), 1.0)
    assert np.isclose(top2[0] / top2[1], plain[0] / plain[1])  # renormalised, ratios kept
    nucleus = pm.sampling_distribution(logits, pm.Sampling(temperature=1.0, top_p=0.5))
    assert nucleus.tolist() == [1.0, 0.0, 0.0, 0.0]  # p(top) = 0.64 already covers 0.5


def test_pick_token_greedy_is_argmax_and_draws_nothing() -> None:
    logits = np.array([0.1, 3.0, 2.9], dtype=np.float32)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    assert pm.pick_token(logits, pm.Sampling(), rng) == 1
    assert rng.bit_generator.state == state


def test_pick_token_samples_the_distribution_and_respects_filters() -> None:
    logits = np.log(np.array([0.6, 0.3, 0.1], dtype=np.float32))
    rng = np.random.default_rng(0)
    draws = np.bincount([pm.pick_token(logits, pm.Sampling(temperature=1.0), rng) for _ in range(6000)], minlength=3)
    assert np.allclose(draws / 6000, [0.6, 0.3, 0.1], atol=0.03)
    top1 = {pm.pick_token(logits, pm.Sampling(temperature=2.0, top_k=1), rng) for _ in range(200)}
    assert top1 == {0}
    nucleus = {pm.pick_token(logits, pm.Sampling(temperature=1.0, top_p=0.85), rng) for _ in range(500)}
    assert nucleus == {0, 1}


def test_a_near_tie_flipped_by_float_noise_does_not_change_the_draw() -> None:
    """Batch neighbours change a row's logits in the last bits; the draw must not care about
    the order of two nearly equal tokens (a probability-ordered inverse CDF would)."""
    logits = np.array([0.0, 5.0, 5.0 + 1e-5, 1.0, 4.0], dtype=np.float32)
    noisy = np.array([0.0, 5.0 + 1e-5, 5.0, 1.0, 4.0], dtype=np.float32)
    for sampling in (pm.Sampling(1.0, top_p=0.9), pm.Sampling(1.0, top_k=3), pm.Sampling(0.7)):
        picks = [pm.pick_token(logits, sampling, np.random.default_rng(s)) for s in range(300)]
        assert picks == [pm.pick_token(noisy, sampling, np.random.default_rng(s)) for s in range(300)]
        assert {1, 2} <= set(picks)


def test_seeded_rng_replays_and_seeds_differ() -> None:
    def draws(seed: int | None) -> list[float]:
        rng = pm.Sampling(temperature=1.0, seed=seed).rng()
        return [float(rng.random()) for _ in range(5)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)
    assert draws(-1) == draws(-1)  # any int64 is a seed
    assert draws(None) != draws(None)  # fresh entropy


# ---------------------------------------------------------------- stop strings and stable text


def test_first_stop_and_held_back() -> None:
    assert pm.first_stop("abc\nEND", ["END", "\n"]) == 3
    assert pm.first_stop("abc", ["x"]) is None
    assert pm.held_back("hello EN", ["END"]) == 2
    assert pm.held_back("hello E", ["END", "Eve"]) == 1
    assert pm.held_back("hello", ["END"]) == 0
    assert pm.held_back("xEN", ["ENDING", "N"]) == 2  # "N" alone is a whole stop, not a prefix


def test_text_stream_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    stream = pm.TextStream(["END"])
    assert stream.advance("Hello") == ("Hello", False)
    assert stream.advance("Hello E") == (" ", False)  # "E" may start "END"
    assert stream.advance("Hello EN") == ("", False)
    assert stream.advance("Hello ENd") == ("ENd", False)  # it did not
    assert stream.advance("Hello ENd, END and more") == (", ", True)
    assert stream.text == "Hello ENd, "


def test_text_stream_flushes_what_it_held_when_the_sequence_ends() -> None:
    stream = pm.TextStream(["\n\n"])
    assert stream.advance("one\n") == ("one", False)
    assert stream.finish("one\n") == "\n"
    assert stream.text == "one\n"


def test_text_stream_holds_back_an_incomplete_character() -> None:
    stream = pm.TextStream()
    assert stream.advance("caf\ufffd") == ("caf", False)
    assert stream.advance("café") == ("é", False)
    assert stream.finish("café\ufffd") == "\ufffd"  # a truly broken ending is not swallowed


def byte_tokenizer() -> Any:
    """A real byte-level BPE with no merges: every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def row(tokens_to_text: Any, limit: int = 100, stops: tuple[str, ...] = (), eos: int = -1) -> pm.Row:
    return pm.Row([1, 2, 3], limit, pm.Sampling(), stops, True, tokens_to_text, {eos})


def test_incremental_detokenization_of_multi_byte_characters() -> None:
    tokenizer = byte_tokenizer()
    text = "naïve café → 東京 😀!"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    r = row(tokenizer.decode, limit=len(ids))
    deltas = [r.accept(t) for t in ids]
    assert "".join(d.delta for d in deltas) == text
    assert not any("\ufffd" in d.delta for d in deltas)
    assert [d.finish_reason for d in deltas] == [""] * (len(ids) - 1) + ["length"]
    assert sum(1 for d in deltas if d.delta) < len(ids)  # steps inside a character emitted nothing


def test_stop_string_across_tokens_finishes_with_stop() -> None:
    tokenizer = byte_tokenizer()
    ids = tokenizer.encode("Paris.\nNext question").ids
    r = row(tokenizer.decode, stops=("\nNext",))
    events = []
    for t in ids:
        events.append(r.accept(t))
        if r.done:
            break
    assert r.text == "Paris." and r.finish_reason == "stop"
    assert "".join(e.delta for e in events) == "Paris."
    assert events[-1].completion_tokens == len(tokenizer.encode("Paris.\nNext").ids)  # tokens consumed


def test_eos_finishes_with_stop_and_is_not_counted() -> None:
    tokenizer = byte_tokenizer()
    ids = tokenizer.encode("Hi").ids
    r = row(tokenizer.decode, eos=999)
    assert [r.accept(t).finish_reason for t in ids] == ["", ""]
    last = r.accept(999)
    assert (last.finish_reason, last.completion_tokens, r.text) == ("stop", 2, "Hi")


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("request_", "parameter"),
    [
        (pm.GenerationRequest(sampling=pm.Sampling(temperature=-0.1)), "temperature"),
        (pm.GenerationRequest(sampling=pm.Sampling(temperature=2.5)), "temperature"),
        (pm.GenerationRequest(sampling=pm.Sampling(temperature=float("nan"))), "temperature"),
        (pm.GenerationRequest(sampling=pm.Sampling(temperature=1.0, top_p=0.0)), "top_p"),
        (pm.GenerationRequest(sampling=pm.Sampling(top_p=1.5)), "top_p"),
        (pm.GenerationRequest(sampling=pm.Sampling(top_k=-1)), "top_k"),
        (pm.GenerationRequest(max_tokens=0), "max_tokens"),
        (pm.GenerationRequest(stop=("a", "b", "c", "d", "e")), "stop"),
        (pm.GenerationRequest(stop=("",)), "stop"),
    ],
)
def test_bad_parameters_name_the_parameter(request_: pm.GenerationRequest, parameter: str) -> None:
    with pytest.raises(pm.ParameterError, match=f"'{parameter}'") as info:
        request_.validate()
    assert info.value.parameter == parameter


def test_good_parameters_pass() -> None:
    pm.GenerationRequest(max_tokens=1, stop=("a", "b", "c", "d"), sampling=pm.Sampling(2.0, 1.0, 0, -5)).validate()
    pm.GenerationRequest(sampling=pm.Sampling(temperature=0.0, top_p=1e-6)).validate()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"role": "user"}', "JSON list"),
        ("[]", "non-empty"),
        ('[{"content": "hi"}]', "'role'"),
        ('[{"role": "user", "content": 3}]', "'content'"),
    ],
)
def test_bad_messages(text: str, needle: str) -> None:
    with pytest.raises(pm.ParameterError, match="'messages'") as info:
        pm.parse_messages(text)
    assert needle in str(info.value)


def test_messages_and_stop_parse() -> None:
    assert pm.parse_messages("") is None
    parsed = pm.parse_messages('[{"role": "system", "content": "Be brief."}, {"role": "user", "content": null}]')
    assert parsed == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": ""})
    assert pm.parse_stop("") == () and pm.parse_stop('["\\n", "END"]') == ("\n", "END")
    for bad in ("nope", '"\\n"', "[1]"):
        with pytest.raises(pm.ParameterError, match="'stop'"):
            pm.parse_stop(bad)


# ---------------------------------------------------------------- the engine on a tiny Llama


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("gen")
    ckpt = tiny_llama(tmp / "ckpt")
    out = tmp / "store" / "key"
    code, summary, _ = run_cli(
        ["--source", str(ckpt), "--task", "text-generation", "--name", "tiny", "--out", str(out),
         "--precision", "fp32", "--eval-limit", "4", "--speed-rounds", "0"],
        tmp,
    )  # fmt: skip
    assert code == 0, summary.message
    return out / "tiny" / "1"


@pytest.fixture
def engine(version_dir: Path) -> pm.Generator:
    loaded = pm.load_engine(version_dir)
    assert isinstance(loaded, pm.Generator)
    return loaded


def previous_greedy(engine: pm.Generator, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """The greedy loop model.py had before sampling (verbatim but for names): the reference."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), engine.pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    logits, past = engine._step(ids, mask, positions, {})
    out: list[list[int]] = [[] for _ in prompts]
    done = np.array([m <= 0 for m in max_tokens])
    for _ in range(max(max_tokens)):
        nxt = logits.argmax(axis=-1).astype(np.int64)
        for i, token in enumerate(nxt):
            if done[i]:
                continue
            if int(token) in engine.eos_ids:
                done[i] = True
                continue
            out[i].append(int(token))
            done[i] = len(out[i]) >= max_tokens[i]
        if done.all():
            break
        mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        logits, past = engine._step(nxt[:, None], mask, positions, past)
    return out


class MarkovSession:
    """The tiny random Llama's greedy output is one repeated token; adding a fixed random bias
    per input token to its logits makes greedy texts varied (and EOS reachable), for both loops."""

    def __init__(self, session: Any, vocab: int) -> None:
        self.session = session
        self.bias = np.random.default_rng(5).normal(0, 4, size=(vocab, vocab)).astype(np.float32)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[Any]:
        outputs = self.session.run(names, feeds)
        i = names.index("logits")
        outputs[i] = outputs[i] + self.bias[feeds["input_ids"]]
        return outputs


def test_temperature_zero_is_the_previous_greedy_output(engine: pm.Generator) -> None:
    engine.session = MarkovSession(engine.session, len(engine.tokenizer))
    texts = ["hello world", "a much longer prompt than the first one", "x", "the cat"]
    limits = [12, 5, 30, 40]
    prompts = [engine.prompt_ids(t) for t in texts]
    reference = previous_greedy(engine, prompts, limits)
    assert len({t for g in reference for t in g}) > 5  # not a degenerate repetition
    assert engine.generate_ids(prompts, limits) == reference
    results = engine.complete([pm.GenerationRequest(text=t, max_tokens=m) for t, m in zip(texts, limits, strict=True)])
    assert [r["text_output"] for r in results] == [
        engine.tokenizer.decode(g, skip_special_tokens=True) for g in reference
    ]
    assert [r["completion_tokens"] for r in results] == [len(g) for g in reference]
    assert [r["prompt_tokens"] for r in results] == [len(p) for p in prompts]
    assert engine.run(texts, limits) == results  # the optimizer's entry point is the same greedy path


def sampled(engine: pm.Generator, text: str, seed: int | None, max_tokens: int = 24) -> pm.GenerationRequest:
    return pm.GenerationRequest(text=text, max_tokens=max_tokens, sampling=pm.Sampling(0.8, 0.95, 40, seed))


def test_same_seed_same_text_whatever_else_is_in_the_batch(engine: pm.Generator) -> None:
    engine.eos_ids = set()  # a random model ends early at random; this test wants long texts
    alone = engine.complete([sampled(engine, "hello world", 7)])[0]
    others = [
        sampled(engine, "a much longer prompt than the first one", 1, 40),
        pm.GenerationRequest(text="greedy neighbour", max_tokens=3),
        sampled(engine, "hello world", None),
    ]
    batched = engine.complete([others[0], sampled(engine, "hello world", 7), *others[1:]])
    assert batched[1] == alone
    assert engine.complete([*others, sampled(engine, "hello world", 7)])[3] == alone
    other_seed = engine.complete([sampled(engine, "hello world", 8)])[0]
    assert other_seed["text_output"] != alone["text_output"]
    greedy = engine.complete([pm.GenerationRequest(text="hello world", max_tokens=24)])[0]
    assert greedy["text_output"] != alone["text_output"]  # sampling did sample


def test_rows_finish_independently_with_their_own_reason(engine: pm.Generator) -> None:
    engine.eos_ids = set()
    results = engine.complete(
        [pm.GenerationRequest(text="abc", max_tokens=2), pm.GenerationRequest(text="abc", max_tokens=9)]
    )
    assert [(r["finish_reason"], r["completion_tokens"]) for r in results] == [("length", 2), ("length", 9)]
    assert results[1]["text_output"].startswith(results[0]["text_output"])


def test_stop_string_on_the_model(engine: pm.Generator) -> None:
    engine.eos_ids = set()
    full = engine.complete([pm.GenerationRequest(text="abc", max_tokens=20)])[0]["text_output"]
    stop = full[5:7]
    assert len(full) >= 10 and stop
    cut = engine.complete([pm.GenerationRequest(text="abc", max_tokens=20, stop=(stop,))])[0]
    assert cut["finish_reason"] == "stop"
    assert cut["text_output"] == full[: full.index(stop)]
    assert cut["completion_tokens"] < 20


def test_eos_is_stop(engine: pm.Generator) -> None:
    engine.eos_ids = set()
    first = engine.row(sampled(engine, "abc", 11, 20))
    for _ in engine.decode([first]):
        pass
    # Pretend the first sampled token that is new at its step is EOS; the seed replays the rest.
    tokens = first.tokens
    step = next(k for k in range(1, len(tokens)) if tokens[k] not in tokens[:k])
    engine.eos_ids = {tokens[step]}
    (result,) = engine.complete([sampled(engine, "abc", 11, 20)])
    assert (result["finish_reason"], result["completion_tokens"]) == ("stop", step)
    assert result["text_output"] == engine.tokenizer.decode(tokens[:step])


def test_max_tokens_is_bounded_by_the_context_not_512(engine: pm.Generator) -> None:
    assert engine.max_positions == 256
    assert engine.limit(None) == 64 and engine.limit(100) == 100 and engine.limit(10_000) == 255
    engine.eos_ids = set()
    long_prompt = "word " * 100
    r = engine.row(pm.GenerationRequest(text=long_prompt, raw=True, max_tokens=200))
    assert r.limit == 200 and len(r.prompt_ids) == 56  # the end of the prompt, so both fit in 256
    assert r.prompt_ids == engine.prompt_ids(long_prompt, raw=True)[-56:]
    (result,) = engine.complete([pm.GenerationRequest(text="hi", raw=True, max_tokens=10_000)])
    assert (result["finish_reason"], result["completion_tokens"], result["prompt_tokens"]) == ("length", 255, 1)


def test_messages_use_the_chat_template_and_raw_skips_it(engine: pm.Generator) -> None:
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"})
    rendered = "<s>system: Be brief.</s><s>user: hi</s><s>assistant: "
    expected = engine.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert engine.row(pm.GenerationRequest(messages=messages)).prompt_ids == expected
    wrapped = engine.row(pm.GenerationRequest(text="hi")).prompt_ids
    assert wrapped == engine.tokenizer("<s>user: hi</s><s>assistant: ", add_special_tokens=False)["input_ids"]
    raw = engine.row(pm.GenerationRequest(text="hi", raw=True)).prompt_ids
    assert raw == engine.tokenizer("hi")["input_ids"]
    engine.has_chat_template = False
    with pytest.raises(pm.ParameterError, match="'messages'"):
        engine.row(pm.GenerationRequest(messages=messages))


# ---------------------------------------------------------------- the Triton entry point


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error

    def value(self, name: str) -> Any:
        item = self.outputs[name].reshape(-1)[0]
        return item.decode() if isinstance(item, bytes) else int(item)


class FakeError:
    INVALID_ARG = "INVALID_ARG"
    CANCELLED = "CANCELLED"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code


FINAL = 1


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[FakeResponse | None, int]] = []

    def send(self, response: FakeResponse | None = None, flags: int = 0) -> None:
        assert not any(f & FINAL for _, f in self.sent), "sent after the final flag"
        self.sent.append((response, flags))


class FakeRequest(dict[str, FakeTensor]):
    def __init__(self, **inputs: Any) -> None:
        super().__init__()
        dtypes = {"raw": np.bool_, "stream": np.bool_, "max_tokens": np.int32, "top_k": np.int32, "seed": np.int64}
        for name, value in inputs.items():
            if isinstance(value, str):
                array = np.array([[value.encode()]], dtype=np.object_)
            else:
                array = np.array([[value]], dtype=dtypes.get(name, np.float32))
            self[name] = FakeTensor(name, array)
        self.sender = FakeSender()

    def get_response_sender(self) -> FakeSender:
        return self.sender


@pytest.fixture
def triton_model(version_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The model.py the artifact ships, imported the way Triton imports it."""
    fake = types.SimpleNamespace(
        Tensor=FakeTensor,
        InferenceResponse=FakeResponse,
        TritonError=FakeError,
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=FINAL,
        get_input_tensor_by_name=lambda request, name: request.get(name),
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("shipped_generation_model", version_dir / "model.py")
    assert spec is not None and spec.loader is not None
    shipped = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "shipped_generation_model", shipped)
    spec.loader.exec_module(shipped)

    def load(decoupled: bool = True) -> Any:
        model = shipped.TritonPythonModel()
        config = {"max_batch_size": 8, "parameters": {}, "model_transaction_policy": {"decoupled": decoupled}}
        model.initialize({"model_config": json.dumps(config)})
        model.engine.eos_ids = set()
        return model

    yield load


def test_decoupled_execute_streams_answers_and_isolates_errors(triton_model: Any) -> None:
    model = triton_model()
    params = {"text_input": "hello", "max_tokens": 12, "temperature": 0.8, "seed": 3}
    stream = FakeRequest(**params, stream=True)
    whole = FakeRequest(**params)
    bad = FakeRequest(text_input="hello", temperature=3.0)
    short = FakeRequest(text_input="hello", max_tokens=2, stop='["zzz"]')
    malformed = FakeRequest(max_tokens=2)
    assert model.execute([stream, whole, bad, short, malformed]) is None  # decoupled: all via senders

    # Not streaming: exactly one response, carrying the final flag.
    for request in (whole, short):
        ((response, flags),) = request.sender.sent
        assert flags == FINAL and response is not None and response.error is None
    assert whole.sender.sent[0][0].value("finish_reason") == "length"
    assert whole.sender.sent[0][0].value("completion_tokens") == 12
    assert short.sender.sent[0][0].value("completion_tokens") == 2
    # Streaming: several chunks, finish_reason and the final flag only on the last.
    chunks = [r for r, _ in stream.sender.sent]
    assert len(chunks) > 2 and [f for _, f in stream.sender.sent] == [0] * (len(chunks) - 1) + [FINAL]
    assert [c.value("finish_reason") for c in chunks] == [""] * (len(chunks) - 1) + ["length"]
    assert "".join(c.value("text_output") for c in chunks) == whole.sender.sent[0][0].value("text_output")
    assert chunks[-1].value("completion_tokens") == 12
    assert chunks[-1].value("prompt_tokens") == whole.sender.sent[0][0].value("prompt_tokens") > 0
    # A bad parameter fails its own request only, as a client error naming the parameter.
    ((error, flags),) = bad.sender.sent
    assert flags == FINAL and error is not None and error.error.code == "INVALID_ARG"
    assert "'temperature'" in error.error.message
    assert "'text_input'" in malformed.sender.sent[0][0].error.message


def test_a_failed_batch_raises_for_the_failure_counter(triton_model: Any) -> None:
    model = triton_model()

    class Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

        def run(self, *_: Any) -> Any:
            raise RuntimeError("onnxruntime exploded")

    session = model.engine.session
    model.engine.session = Broken()
    with pytest.raises(RuntimeError, match="inference failed: onnxruntime exploded"):
        model.execute([FakeRequest(text_input="hello")])


def test_not_decoupled_returns_the_responses_and_refuses_streams(triton_model: Any) -> None:
    model = triton_model(decoupled=False)
    responses = model.execute([FakeRequest(text_input="hello", max_tokens=3), FakeRequest(text_input="x", stream=True)])
    assert responses[0].value("completion_tokens") == 3
    assert responses[1].error is not None and "'stream'" in responses[1].error.message


def test_execute_keeps_no_request_state_on_the_model(triton_model: Any) -> None:
    model = triton_model()
    before = set(vars(model))
    model.execute([FakeRequest(text_input="hello", max_tokens=2, stream=True)])
    assert set(vars(model)) == before


def test_a_cancelled_or_unreachable_request_is_dropped_and_its_batch_goes_on(triton_model: Any) -> None:
    model = triton_model()
    cancelled = FakeRequest(text_input="hello", max_tokens=40, stream=True)
    cancelled.sender.is_cancelled = lambda: True  # type: ignore[attr-defined]
    unreachable = FakeRequest(text_input="hello", max_tokens=40, stream=True)

    def broken(response: Any = None, flags: int = 0) -> None:
        unreachable.sender.sent.append((response, flags))
        raise RuntimeError("Unable to send response. Response sender has been closed.")

    unreachable.sender.send = broken  # type: ignore[method-assign]
    fine = FakeRequest(text_input="hello", max_tokens=40)
    assert model.execute([cancelled, fine, unreachable]) is None
    ((response, flags),) = fine.sender.sent
    assert flags == FINAL and response.value("completion_tokens") == 40
    chunks, (last, last_flags) = cancelled.sender.sent[:-1], cancelled.sender.sent[-1]
    assert last_flags == FINAL and last.error.code == "CANCELLED"
    assert len(chunks) <= pm.CANCEL_CHECK_STEPS  # it stopped decoding at the first check
    assert len(unreachable.sender.sent) == 1  # one failed send, then nothing more
