"""Tokenizers: SentencePiece (``tokenizer.model``) and Hugging Face ``tokenizers`` (``tokenizer.json``).

``load_tokenizer(path)`` returns a :class:`Tokenizer` with one small API for both kinds: ``encode``/``decode``,
special-token ids, ``stop_ids`` for chat, ``save(folder)`` for checkpoints and ``fingerprint()`` to tag data.
:class:`IncrementalDetokenizer` turns a stream of ids into text without ever emitting half a character.

InternLM2 ships a SentencePiece model whose chat tokens are stored as ``[UNUSED_TOKEN_141]``..``[UNUSED_TOKEN_146]``
(ids 92538..92543); they are renamed to ``<|plugin|>``..``<|im_start|>`` here, the same mapping as the
``added_tokens_decoder`` of InternLM2's ``tokenizer_config.json``. Special tokens in text always encode to single
ids; the text between them is encoded chunk by chunk with plain ``sp.encode``, as HF's slow InternLM2 tokenizer does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import weakref
from pathlib import Path

import sentencepiece as spm
import tokenizers

from .fileio import write_bytes

# InternLM2 stores its chat tokens under placeholder names; order matches ids 92538..92543.
INTERNLM2_SPECIALS = {
    92538: ("[UNUSED_TOKEN_141]", "<|plugin|>"),
    92539: ("[UNUSED_TOKEN_142]", "<|interpreter|>"),
    92540: ("[UNUSED_TOKEN_143]", "<|action_end|>"),
    92541: ("[UNUSED_TOKEN_144]", "<|action_start|>"),
    92542: ("[UNUSED_TOKEN_145]", "<|im_end|>"),
    92543: ("[UNUSED_TOKEN_146]", "<|im_start|>"),
}
# End-of-turn tokens of the chat templates (InternLM2/ChatML, Llama-3); generation stops on them as on eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>")
_BOS_GUESSES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_EOS_GUESSES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")
CONFIG_NAME = "tokenizer_config.json"


class Tokenizer:
    """Shared special-token logic; subclasses implement the actual encoding.

    Attributes:
        bos_id: Beginning-of-sequence id, or None if the tokenizer has none.
        eos_id: End-of-sequence id, or None.
        pad_id: Padding id (falls back to ``eos_id``).
        chat_template: Name of the chat template this tokenizer belongs to (``internlm2``, ``llama3``, ``chatml``),
            or None when unknown.
    """

    file_name: str  # tokenizer.model or tokenizer.json

    def __init__(self, raw: bytes, special_tokens: dict[str, int], config: dict, defaults: dict[str, int | None]):
        self._raw = raw
        self._special = dict(special_tokens)
        self._special_ids = {i: t for t, i in self._special.items()}
        self.bos_id = self._config_id(config, "bos_token", defaults.get("bos_token"))
        self.eos_id = self._config_id(config, "eos_token", defaults.get("eos_token"))
        pad_id = self._config_id(config, "pad_token", defaults.get("pad_token"))
        self.pad_id = self.eos_id if pad_id is None else pad_id
        self._jinja = _jinja_template(config.get("chat_template"))
        self.chat_template = config.get("chat_template_name") or self._guess_template()

    # -- implemented by subclasses -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        raise NotImplementedError

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Encodes text; special tokens written in the text become their single ids.

        Args:
            text: The text to encode.
            add_bos: Prepend ``bos_id``.

        Returns:
            The token ids.
        """
        raise NotImplementedError

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Decodes ids to text, writing special tokens out (or dropping them, bos/eos included, if asked).

        Args:
            ids: Token ids.
            skip_special_tokens: Drop special tokens instead of writing them out.

        Returns:
            The text.
        """
        raise NotImplementedError

    def _piece(self, token_id: int) -> str | None:
        raise NotImplementedError

    def _piece_id(self, token: str) -> int | None:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token text -> id (a copy)."""
        return dict(self._special)

    def token_to_id(self, token: str) -> int:
        """Id of a token (special tokens by their text, others by their vocabulary piece).

        Raises:
            KeyError: The token is not in the vocabulary.
        """
        token_id = self._special[token] if token in self._special else self._piece_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return token_id

    def id_to_token(self, token_id: int) -> str:
        """Vocabulary piece (or special token text) of an id.

        Raises:
            ValueError: The id is out of range.
        """
        if token_id in self._special_ids:
            return self._special_ids[token_id]
        piece = self._piece(token_id) if 0 <= token_id < self.vocab_size else None
        if piece is None:
            raise ValueError(f"token id {token_id} is out of range (vocab_size={self.vocab_size})")
        return piece

    def is_special(self, token_id: int) -> bool:
        """True for special tokens, bos and eos included."""
        return token_id in self._special_ids or token_id in (self.bos_id, self.eos_id)

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a chat reply: eos plus the template's end-of-turn token when the vocabulary has one."""
        ids = [] if self.eos_id is None else [self.eos_id]
        ids += [self._special[t] for t in END_OF_TURN_TOKENS if t in self._special and self._special[t] not in ids]
        return ids

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the tokenizer file plus the special-token setup; equal tokenizers hash equal."""
        h = hashlib.sha256(self.file_name.encode() + b"\0" + self._raw + b"\0")
        setup = {"special": sorted(self._special.items()), "ids": [self.bos_id, self.eos_id, self.pad_id]}
        h.update(json.dumps(setup, ensure_ascii=False).encode())
        return h.hexdigest()

    def save(self, folder: str | os.PathLike) -> None:
        """Writes the tokenizer file and a ``tokenizer_config.json`` into ``folder`` (created if missing).

        ``load_tokenizer(folder)`` gives back an equal tokenizer (same ids, same fingerprint).

        Args:
            folder: Destination folder, e.g. a checkpoint folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(folder / self.file_name, self._raw)
        write_bytes(folder / CONFIG_NAME, json.dumps(self._config(), ensure_ascii=False, indent=2).encode())

    def _config(self) -> dict:
        def text(token_id):
            return None if token_id is None else self.id_to_token(token_id)

        config = {
            "bos_token": text(self.bos_id),
            "eos_token": text(self.eos_id),
            "pad_token": text(self.pad_id),
            "added_tokens_decoder": {
                str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
                for t, i in sorted(self._special.items(), key=lambda kv: kv[1])
            },
            "chat_template_name": self.chat_template,
        }
        if self._jinja is not None:  # keep the original HF template so the folder still works with transformers
            config["chat_template"] = self._jinja
        return config

    def _config_id(self, config: dict, key: str, default: int | None) -> int | None:
        token = config.get(key)
        if isinstance(token, dict):  # {"content": "<s>", "__type": "AddedToken", ...}
            token = token.get("content")
        if token is None:
            return default
        try:
            return self.token_to_id(token)
        except KeyError as err:
            raise ValueError(f"{CONFIG_NAME}: {key} {token!r} is not in the vocabulary") from err

    def _guess_template(self) -> str | None:
        hints = (self._jinja or "") + " ".join(self._special)
        if "<|start_header_id|>" in hints:
            return "llama3"
        if "<|im_start|>" in hints:
            return "internlm2" if "<|plugin|>" in self._special else "chatml"
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model plus special tokens (InternLM2's chat tokens are found automatically)."""

    file_name = "tokenizer.model"

    def __init__(self, raw: bytes, config: dict | None = None):
        config = config or {}
        self.sp = spm.SentencePieceProcessor(model_proto=raw)
        n = self.sp.get_piece_size()
        special = {self.sp.id_to_piece(i): i for i in (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) if i >= 0}
        if all(i < n and self.sp.id_to_piece(i) == old for i, (old, _) in INTERNLM2_SPECIALS.items()):
            special.update({new: i for i, (_, new) in INTERNLM2_SPECIALS.items()})
        for i, entry in config.get("added_tokens_decoder", {}).items():
            special[entry["content"]] = int(i)
        self._sp_size = n
        self._vocab_size = max([n, *(i + 1 for i in special.values())])
        ids = {"bos_token": self.sp.bos_id(), "eos_token": self.sp.eos_id(), "pad_token": self.sp.pad_id()}
        super().__init__(raw, special, config, {k: i for k, i in ids.items() if i >= 0})
        # Longest first so that e.g. "<|im_end|>" is never split into a shorter special token.
        alternatives = "|".join(re.escape(t) for t in sorted(self._special, key=len, reverse=True))
        self._split = re.compile(f"({alternatives})") if alternatives else None

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos and self.bos_id is not None else []
        chunks = self._split.split(text) if self._split else [text]
        # re.split with one group alternates text, special, text, ...; no stripping around specials.
        for k, chunk in enumerate(chunks):
            if k % 2:
                ids.append(self._special[chunk])
            elif chunk:
                ids += self.sp.encode(chunk)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        out, run = [], []
        for i in ids:
            if i in self._special_ids:
                out.append(self.sp.decode(run))
                run = []
                if not skip_special_tokens:
                    out.append(self._special_ids[i])
            elif 0 <= i < self._sp_size:
                run.append(i)
            else:
                raise ValueError(f"token id {i} is out of range (vocab_size={self.vocab_size})")
        out.append(self.sp.decode(run))
        return "".join(out)

    def _piece(self, token_id: int) -> str | None:
        return self.sp.id_to_piece(token_id) if token_id < self._sp_size else None

    def _piece_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)  # unknown pieces map to unk: check the round trip
        return i if self.sp.id_to_piece(i) == token else None


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer (``tokenizer.json``); its special added tokens are the specials."""

    file_name = "tokenizer.json"

    def __init__(self, raw: bytes, config: dict | None = None):
        self.tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
        special = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        # tokenizer.json does not say which token is bos/eos; without a config, guess from common names.
        defaults = {
            "bos_token": next((special[t] for t in _BOS_GUESSES if t in special), None),
            "eos_token": next((special[t] for t in _EOS_GUESSES if t in special), None),
        }
        super().__init__(raw, special, config or {}, defaults)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        # add_special_tokens=False: no post-processor template (e.g. Llama-3 adding <|begin_of_text|> itself).
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        V = self.vocab_size  # once: each read is a call into the Rust tokenizer
        if ids and not (0 <= min(ids) and max(ids) < V):
            bad = next(i for i in ids if not 0 <= i < V)
            raise ValueError(f"token id {bad} is out of range (vocab_size={V})")
        if skip_special_tokens:
            ids = [i for i in ids if not self.is_special(i)]
        return self.tok.decode(ids, skip_special_tokens=False)

    def _piece(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)

    def _piece_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a tokenizer from a folder or a file.

    A folder must hold ``tokenizer.model`` (SentencePiece, preferred when both exist) or ``tokenizer.json``
    (Hugging Face ``tokenizers``); a ``tokenizer_config.json`` next to the file, when present, supplies the
    bos/eos/pad tokens, ``added_tokens_decoder`` and the chat template.

    Args:
        path: A folder, or the path of a ``.model`` or ``.json`` tokenizer file.

    Returns:
        A :class:`SentencePieceTokenizer` or :class:`HFTokenizer`.

    Raises:
        FileNotFoundError: The path does not exist, or the folder holds no tokenizer file.
        ValueError: The file is not a tokenizer file this loader knows, or it cannot be parsed.
    """
    path = Path(path)
    if path.is_dir():
        file = next((path / n for n in ("tokenizer.model", "tokenizer.json") if (path / n).is_file()), None)
        if file is None:
            raise FileNotFoundError(
                f"{path}: no tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face tokenizers) in this folder"
            )
    elif path.is_file():
        file = path
    else:
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    if file.name == CONFIG_NAME or file.suffix not in (".model", ".json"):
        raise ValueError(f"{file}: not a tokenizer file; expected a SentencePiece .model or a tokenizer.json")
    config = _read_config(file.parent / CONFIG_NAME)
    cls = SentencePieceTokenizer if file.suffix == ".model" else HFTokenizer
    try:
        return cls(file.read_bytes(), config)
    except Exception as err:  # sentencepiece raises RuntimeError, tokenizers a bare Exception
        raise ValueError(f"{file}: cannot load as {cls.__name__}: {err}") from err


class IncrementalDetokenizer:
    """Streams text from ids one at a time, never emitting half a character.

    Like vLLM's incremental detokenization and HF's TextStreamer: each step decodes only a short window (the
    previously emitted tokens as context, plus the new ones) and emits the text difference. The window's context
    makes tokenizers that strip a leading space at decode time behave, and a window whose text ends in U+FFFD
    (an incomplete UTF-8 character from byte-fallback pieces) is held until the character is complete. The
    concatenation of all ``add()`` results and ``flush()`` equals ``tokenizer.decode(all_ids)``.

    Args:
        tokenizer: The tokenizer whose ids are streamed.
        skip_special_tokens: Passed to ``decode``.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: first token of the previous emission (context)
        self._read = 0  # tokens before this index have been emitted
        self._prefix_text = ""  # decode(ids[_prefix:_read]), cached

    def add(self, token_id: int) -> str:
        """Adds one id; returns the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        return self._emit(final=False)

    def add_many(self, token_ids: list[int]) -> str:
        """Adds several ids with one decode (instead of one per id); returns the newly completed text, the same
        as the concatenated results of `add` for each id would be by the last of them."""
        if not token_ids:
            return ""
        self.ids.extend(token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Returns whatever text is still held back (an incomplete character decodes as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        end = len(self.ids)
        while True:  # a window ending inside a character emits up to the character's first token
            text = self.tokenizer.decode(self.ids[self._prefix : end], self.skip_special_tokens)
            if final or not text.endswith("\ufffd"):
                break
            end -= 1
            if end <= self._read:
                return ""
        delta = text[len(self._prefix_text) :]
        self._prefix, self._read = self._read, end
        # Decoded on its own, not sliced from `text`: decoders may strip a leading space at a window start.
        window = self.ids[self._prefix : self._read]
        if len(window) == 1:  # the common case: one token's text, cached per tokenizer
            cache = _single_token_text.setdefault(self.tokenizer, {})
            key = (window[0], self.skip_special_tokens)
            if key not in cache:
                cache[key] = self.tokenizer.decode(window, self.skip_special_tokens)
            self._prefix_text = cache[key]
        else:
            self._prefix_text = self.tokenizer.decode(window, self.skip_special_tokens)
        return delta


_single_token_text: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {(id, skip): text}


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def _jinja_template(value) -> str | None:
    # HF configs hold a Jinja string, or a list of {"name", "template"} with a "default" entry.
    if isinstance(value, list):
        value = next((t.get("template") for t in value if t.get("name") == "default"), None)
    return value if isinstance(value, str) else None
