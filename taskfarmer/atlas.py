"""PyTaskFarmer's ATLAS tasklist handlers, so that its INI files keep working (``TaskList = taskfarmer.atlas.X``).

Each line of the tasklist is an input file; each task runs an ATLAS transform (or ``athena.py``) on it in the
task's directory, then copies its output to ``WORKDIR/output``, as PyTaskFarmer 0.1.0 built the command::

    [digi]
    TaskList = taskfarmer.atlas.TransformTaskList
    transform = Reco_tf.py
    input = HITS
    output = RDO
    conditionsTag = default:OFLCOND-MC16-SDR-RUN2-06

Every other key becomes ``--KEY 'VALUE'`` as PyTaskFarmer wrote it: the value inside single quotes, as is (a
value may close and reopen them to pass several words, as PyTaskFarmer's own ``preExec`` example does). Output
names carry the task ID: give ``--numbering tasks`` to get PyTaskFarmer's numbers. PyTaskFarmer's
``maxEventsPerJob`` (one input file split into several tasks, with PyROOT) is refused: here a line is a task.
"""

from __future__ import annotations

from typing import Final

from taskfarmer.tasklist import TaskList

# The work directory's output folder, created by the task itself: the handler does not know the work directory,
# and a task may run on another node, inside a container, where only the task's environment tells.
_COPY: Final = 'mkdir -p "$TASKFARMER_WORKDIR/output" && cp {source} "$TASKFARMER_WORKDIR/output/{target}"'


def _refuse_splitting(max_events: str | None) -> None:
    if max_events is not None:
        msg = (
            f"maxEventsPerJob = {max_events}: one input file cannot become several tasks here (a line is a task);"
            " list the chunks as lines of a TemplateTaskList (--skipEvents, --maxEvents), or use AthenaMP"
            " (athenaopt = all:--nprocs=N)"
        )
        raise ValueError(msg)


def _options(options: dict[str, str]) -> list[str]:
    """:returns: ``--KEY 'VALUE'`` for each option, quoted as PyTaskFarmer quoted them"""
    return [f"--{key} '{value}'" for key, value in options.items()]


class TransformTaskList(TaskList):
    """An ATLAS transform per input file: ``TRANSFORM --KEY 'VALUE'... --inputINPUTFile LINE
    --outputOUTPUTFile OUTPUT.ID.root``, then its output copied to ``WORKDIR/output``.

    :param transform: the transform (``Reco_tf.py``, ``Sim_tf.py``)
    :param input: the type of the input files (``HITS``)
    :param output: the type of the output file (``RDO``)
    :param maxEventsPerJob: refused (see the module docstring)
    :param options: the transform's other arguments
    """

    def __init__(
        self,
        *,
        transform: str,
        input: str,  # noqa: A002  # PyTaskFarmer's INI key
        output: str,
        maxEventsPerJob: str | None = None,  # noqa: N803  # PyTaskFarmer's INI key
        **options: str,
    ) -> None:
        super().__init__()
        _refuse_splitting(maxEventsPerJob)
        self.words = [transform, *_options(options)]
        self.input = input
        self.output = output

    def command(self, line: str, *, taskid: int) -> str:
        """:returns: the transform on the input file *line*, then the copy of its output"""
        target = f"{self.output}.{taskid}.root"
        words = [*self.words, f"--input{self.input}File {line}", f"--output{self.output}File {target}"]
        return " ".join(words) + " && " + _COPY.format(source=target, target=target)


class AthenaTaskList(TaskList):
    """``athena.py --KEY 'VALUE'... --filesInput LINE JOBOPTIONS`` per input file, then its output file copied to
    ``WORKDIR/output/OUTPUT.ID``.

    :param jobOptions: the job options file
    :param output: the name of the file the job writes
    :param maxEventsPerJob: refused (see the module docstring)
    :param options: athena's other arguments
    """

    def __init__(
        self,
        *,
        jobOptions: str,  # noqa: N803  # PyTaskFarmer's INI key
        output: str,
        maxEventsPerJob: str | None = None,  # noqa: N803  # PyTaskFarmer's INI key
        **options: str,
    ) -> None:
        super().__init__()
        _refuse_splitting(maxEventsPerJob)
        self.words = ["athena.py", *_options(options)]
        self.job_options = jobOptions
        self.output = output

    def command(self, line: str, *, taskid: int) -> str:
        """:returns: athena on the input file *line*, then the copy of its output"""
        words = [*self.words, f"--filesInput {line}", self.job_options]
        return " ".join(words) + " && " + _COPY.format(source=self.output, target=f"{self.output}.{taskid}")
