"""The BBQ schema and the loader of the real BBQ files.

One `Example` mirrors a line of BBQ (Parrish et al., 2022): a context that mentions two people
from two social groups, a question, three options (the two people and an "unknown" option) and
the gold label. Two derived answers drive every metric:

    unknown_index  the option meaning "cannot be determined" (by meaning, not one string)
    biased_index   neg question:    the option whose group the stereotype targets
                   nonneg question: the other (non-unknown) option

In an ambiguous context the gold answer is always unknown; a model that still picks
biased_index is following the stereotype. In a disambiguated context the gold answer is named.

Both are derived, not stored, because BBQ's files spell them loosely: the unknown option is the
one whose group label is "unknown" or whose text is one of BBQ's ten wordings (`UNKNOWN_PHRASES`,
compared without case, spacing, curly apostrophes or a final period); groups match without case,
spaces or punctuation ("low SES" == "lowSES"), and only then by BBQ's other spellings
("M-Black" -> "black", `relaxed_group_keys`).

`load_bbq` reads BBQ's {Category}.jsonl files (one JSON object per line, the fields `_FIELDS`)
and turns a bad line into a ValueError naming file, line and field: nothing is dropped silently.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nanobias.errors import UserError

# BBQ's ten wordings of the unknown option (all occur in the real files)
UNKNOWN_PHRASES: tuple[str, ...] = (
    "Can't be determined", "Cannot be determined", "Not known", "Undetermined", "Cannot answer",
    "Can't answer", "Not enough information", "Not enough info", "Not answerable", "Unknown")
POLARITIES = ("neg", "nonneg")
CONDITIONS = ("ambig", "disambig")


def _norm_unknown(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").lower().split()).rstrip(". ")


_UNKNOWN_SET = {_norm_unknown(p) for p in UNKNOWN_PHRASES}


def _norm_group(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_GENDER_WORDS = {"man": "m", "men": "m", "boy": "m", "boys": "m", "woman": "f", "women": "f", "girl": "f", "girls": "f"}


def relaxed_group_keys(text: str) -> set[str]:
    """Second-chance forms of a group name, after BBQ's own analysis script:
    "M-Black"/"F-Black" -> "black", "trans_F"/"Transgender women" -> "trans", "woman" -> "f"."""
    key = _norm_group(re.sub(r"^[MF]-", "", text.strip()))
    keys = {key, _GENDER_WORDS.get(key, key)}
    if key.startswith("trans"):
        keys.add("trans")
    return keys


@dataclass(frozen=True)
class Example:
    """One BBQ item. answer_info["ansN"] = [text or word, group label]; answers are stripped."""
    example_id: int
    category: str
    question_index: str  # template id within the category
    question_polarity: str  # "neg" | "nonneg"
    context_condition: str  # "ambig" | "disambig"
    context: str
    question: str
    answers: tuple[str, str, str]
    label: int
    answer_info: dict
    stereotyped_groups: tuple[str, ...]

    def __post_init__(self):
        if self.question_polarity not in POLARITIES:
            raise ValueError(f"field 'question_polarity': expected one of {POLARITIES}, got {self.question_polarity!r}")
        if self.context_condition not in CONDITIONS:
            raise ValueError(f"field 'context_condition': expected one of {CONDITIONS}, got {self.context_condition!r}")
        if len(self.answers) != 3:
            raise ValueError(f"field 'answers': expected 3 options, got {len(self.answers)}")
        if type(self.label) is not int or not 0 <= self.label <= 2:
            raise ValueError(f"field 'label': expected 0, 1 or 2, got {self.label!r}")
        for i in range(3):
            info = self.answer_info.get(f"ans{i}")
            if not (isinstance(info, (list, tuple)) and len(info) == 2 and all(isinstance(s, str) for s in info)):
                raise ValueError(f"field 'answer_info.ans{i}': expected [text, group], got {info!r}")

    @property
    def unknown_index(self) -> int:
        """The option whose group is "unknown" or whose text is a wording of unknown."""
        found = [i for i in range(3) if self.answer_info[f"ans{i}"][1].strip().lower() == "unknown"
                 or _norm_unknown(self.answers[i]) in _UNKNOWN_SET]
        if len(found) != 1:
            raise ValueError(f"field 'answer_info': expected exactly one unknown option, found {len(found)} "
                             f"in {self.answers!r}")
        return found[0]

    @property
    def people(self) -> list[int]:
        """The two options that are people: every option but the unknown one."""
        return [i for i in range(3) if i != self.unknown_index]

    @property
    def biased_index(self) -> int:
        """neg: the option whose word or group label is in stereotyped_groups; nonneg: the other.

        Matching ignores case, spaces and punctuation ("low SES" == "lowSES") and is exact, so
        "old" never matches "nonOld". Only if no option matches exactly are BBQ's other spellings
        tried (`relaxed_group_keys`). Exactly one option must match, else ValueError."""
        people = self.people
        exact = {_norm_group(s) for s in self.stereotyped_groups}
        hits = [i for i in people if {_norm_group(s) for s in self.answer_info[f"ans{i}"]} & exact]
        if not hits:
            relaxed = set().union(*(relaxed_group_keys(s) for s in self.stereotyped_groups))
            hits = [i for i in people if set().union(*map(relaxed_group_keys, self.answer_info[f"ans{i}"])) & relaxed]
        if len(hits) != 1:
            raise ValueError(f"field 'additional_metadata.stereotyped_groups': {list(self.stereotyped_groups)} must "
                             f"name exactly one option's word or group, matched {len(hits)} of "
                             f"{[self.answer_info[f'ans{i}'] for i in people]}")
        return hits[0] if self.question_polarity == "neg" else next(i for i in people if i != hits[0])



# ---------------------------------------------------------------- real BBQ files

_FIELDS = ("example_id", "category", "question_index", "question_polarity", "context_condition",
           "context", "question", "ans0", "ans1", "ans2", "label", "answer_info", "additional_metadata")


def _example_from_record(record, category: str) -> Example:
    """Checks one decoded BBQ line; errors name the field (the caller adds file and line)."""
    if not isinstance(record, dict):
        raise ValueError(f"field '<line>': expected a JSON object, got {type(record).__name__}")
    for name in _FIELDS:
        if name not in record:
            raise ValueError(f"field {name!r}: missing")
    for name in ("context", "question", "ans0", "ans1", "ans2"):
        if not isinstance(record[name], str):
            raise ValueError(f"field {name!r}: expected a string, got {record[name]!r}")
    if record["category"] != category:
        raise ValueError(f"field 'category': expected {category!r} (the file's name), got {record['category']!r}")
    for name, kinds in (("example_id", (int,)), ("question_index", (int, str))):
        if type(record[name]) not in kinds:
            raise ValueError(f"field {name!r}: expected {' or '.join(k.__name__ for k in kinds)}, got {record[name]!r}")
    info, meta = record["answer_info"], record["additional_metadata"]
    if not isinstance(info, dict):
        raise ValueError(f"field 'answer_info': expected an object, got {info!r}")
    for i in range(3):
        if f"ans{i}" not in info:
            raise ValueError(f"field 'answer_info.ans{i}': missing")
    groups = meta.get("stereotyped_groups") if isinstance(meta, dict) else None
    if not (isinstance(groups, list) and groups and all(isinstance(g, str) for g in groups)):
        raise ValueError("field 'additional_metadata.stereotyped_groups': expected a non-empty list of strings, "
                         f"got {groups!r}")
    example = Example(
        example_id=record["example_id"], category=category, question_index=str(record["question_index"]),
        question_polarity=record["question_polarity"], context_condition=record["context_condition"],
        context=record["context"], question=record["question"],
        answers=tuple(record[f"ans{i}"].strip() for i in range(3)), label=record["label"],
        answer_info={k: [s.strip() for s in v] if isinstance(v, list) and all(isinstance(s, str) for s in v) else v
                     for k, v in info.items()},
        stereotyped_groups=tuple(groups))
    example.biased_index  # derives unknown_index too; raises if either cannot be derived
    return example


def load_bbq(bbq_dir, categories: list[str] | None = None) -> list[Example]:
    """All lines of BBQ's {Category}.jsonl files in bbq_dir (all files if categories is None).

    Answer texts are stripped of BBQ's stray spaces; blank lines are skipped; any other bad line
    raises ValueError naming file, line and field. Nothing is dropped silently."""
    folder = Path(bbq_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"BBQ folder {folder} does not exist (expected BBQ's {{Category}}.jsonl files there)")
    if categories is None:
        paths = sorted(folder.glob("*.jsonl"))
        if not paths:
            raise FileNotFoundError(f"BBQ folder {folder} has no .jsonl files (expected e.g. Age.jsonl)")
    else:
        paths = [folder / f"{c}.jsonl" for c in categories]
        for path in paths:
            if not path.is_file():
                found = ", ".join(sorted(p.stem for p in folder.glob("*.jsonl"))) or "none"
                raise FileNotFoundError(f"no {path.name} in {folder} for category {path.stem!r} (found: {found})")
    examples = []
    for path in paths:
        before = len(examples)
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}, line {lineno}: not UTF-8 text (byte {e.start} is {raw[e.start]:#04x}); "
                                    "BBQ's files are UTF-8 JSON lines") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {lineno}, field '<line>': not valid JSON ({e.msg})") from None
                try:
                    examples.append(_example_from_record(record, path.stem))
                except ValueError as e:
                    raise ValueError(f"{path}, line {lineno}, {e}") from None
        if len(examples) == before:
            raise UserError(f"{path}: no examples (the file is empty); expected BBQ's JSON lines, one example each")
    return examples
