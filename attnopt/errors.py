"""User-facing errors. The CLI prints their message on one line and exits 2."""


class AttnoptError(Exception):
    """Bad input or a request attnopt cannot serve; the message is shown to the user as is."""


class ModelLoadError(AttnoptError):
    """The model file is missing, corrupt, truncated, or not ONNX."""


class UnsupportedModelError(AttnoptError):
    """The model is valid but uses something attnopt does not support (e.g. an unknown opset domain)."""


class NoSitesError(AttnoptError):
    """A rewrite found no attention site, or none the pass can serve."""


class InvalidParamsError(AttnoptError):
    """Pass parameters that do not validate."""


class RewriteVerificationError(AttnoptError):
    """The rewritten model would not load or run; nothing was written."""


class SiteNotApplicable(AttnoptError):
    """A frontend cannot express this site through the op (e.g. an unknown head count); it stays dense."""


def one_line(message, limit: int | None = 300) -> str:
    """``message`` (text or an exception) on one line for a user: whitespace and line breaks collapsed.

    The CLI promises one line per error; library messages (onnxruntime, protobuf,
    torch.export) spread over many, and the longest are cut at ``limit`` characters.
    """
    text = " ".join(str(message).split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
