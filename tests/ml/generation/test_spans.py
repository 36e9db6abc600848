from jrr_pipeline.ml.generation.spans import (
    candidate_spans,
    diversity,
    longest_copy,
    stopwords,
)

TEXT = "The insulin receptor binds insulin in the liver and the insulin receptor signals."


def test_spans_skip_stopword_edges_and_repeat_texts():
    spans = candidate_spans(TEXT, max_words=3)
    texts = [s.text for s in spans]
    assert texts[:3] == ["insulin", "insulin receptor", "insulin receptor binds"]
    assert len(texts) == len({t.lower() for t in texts})  # "insulin receptor" once
    stop = stopwords()
    for span in spans:
        words = span.text.lower().split()
        assert 1 <= len(words) <= 3 and words[0] not in stop and words[-1] not in stop
        assert TEXT[span.start:span.end] == span.text


def test_spans_stop_at_what_the_encoder_sees_and_at_the_limit():
    assert all(s.end <= 20 for s in candidate_spans(TEXT, max_chars=20))
    assert len(candidate_spans(TEXT, limit=4)) == 4


def test_longest_copy_counts_the_longest_verbatim_run():
    assert longest_copy("insulin receptor binds", TEXT) == 3
    assert longest_copy("liver insulin", TEXT) == 1
    assert longest_copy("kidney", TEXT) == 0
    assert longest_copy("", TEXT) == 0


def test_diversity_by_hand():
    stats = diversity(["a b", "a b", "a c"])
    assert stats["distinct_1"] == 3 / 6
    assert stats["distinct_2"] == 2 / 3
    assert abs(stats["duplicate_rate"] - 1 / 3) < 1e-12
