"""Word error rate as an `evaluate` metric, computed with jiwer; loads offline.

    import evaluate
    from pathlib import Path
    import hfspeech
    wer = evaluate.load(str(Path(hfspeech.__file__).parent / "metrics" / "wer"))
    wer.compute(predictions=["HELLO WORD"], references=["HELLO WORLD"])  # {'wer': 0.5}

With ``return_details=True`` it also returns the substitutions, deletions, insertions and
hits summed over the corpus. WER = (S + D + I) / N over the whole corpus (N = reference
words), not a mean of per-utterance rates.
"""

import datasets
import evaluate
import jiwer

_DESCRIPTION = """Corpus word error rate (S + D + I) / N from jiwer's Levenshtein alignment."""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis transcripts.
    references: list of reference transcripts (none may be empty).
    return_details: also return substitutions, deletions, insertions, hits.
Returns:
    {"wer": float} (+ "substitutions", "deletions", "insertions", "hits" with return_details).
"""
_CITATION = """@misc{jiwer, title={JiWER: Similarity measures for automatic speech recognition evaluation},
author={Vaessen, Nik}, howpublished={https://github.com/jitsi/jiwer}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Wer(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/jitsi/jiwer"],
        )

    def _compute(self, predictions=None, references=None, return_details=False):
        if not references:
            raise ValueError("wer: no references given; pass one reference per prediction.")
        empty = [index for index, reference in enumerate(references) if not reference.strip()]
        if empty:
            raise ValueError(f"wer: references {empty[:10]} are empty; WER is undefined for them. "
                             "Remove those utterances or provide their transcripts.")
        output = jiwer.process_words(list(references), list(predictions))
        result = {"wer": float(output.wer)}
        if return_details:
            result.update(substitutions=int(output.substitutions), deletions=int(output.deletions),
                          insertions=int(output.insertions), hits=int(output.hits))
        return result
