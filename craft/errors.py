"""User-facing errors: one line that names what is wrong and how to fix it."""


class CraftError(Exception):
    """An error caused by input the user controls (config, data, paths).

    The CLI prints ``str(err)`` as a single line and exits with status 2; no traceback.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class Interrupted(Exception):
    """Raised after a checkpoint was saved because the job was asked to stop (SIGTERM).

    The CLI prints it as one line and exits with status 143; rerunning resumes from the
    checkpoint.
    """
