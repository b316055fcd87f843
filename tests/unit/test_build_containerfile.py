"""Containerfile parsing: the supported subset, and clear refusals for everything else."""

from __future__ import annotations

import pytest

from lightabaco.build.containerfile import BuildError, command, expand, key_values, parse, sources_and_dest


def test_continuations_comments_flags_and_forms():
    text = """
# a comment
ARG BASE=lightabaco/busybox
FROM $BASE
ENV A=1 \\
    B="two words"
COPY --chown=app:app --chmod=755 run.sh /app/
RUN echo one && \\
    # dropped comment line
    echo two
CMD ["/app/run.sh", "x"]
ENTRYPOINT /bin/sh -c
EXPOSE 8080
"""
    ins = parse(text)
    assert [i.keyword for i in ins] == ["ARG", "FROM", "ENV", "COPY", "RUN", "CMD", "ENTRYPOINT"]
    assert ins[3].flags == {"chown": "app:app", "chmod": "755"}
    assert ins[3].args == "run.sh /app/"
    assert ins[4].line == 8 and "echo two" in ins[4].args and "dropped" not in ins[4].args
    assert command(ins[5]) == ["/app/run.sh", "x"]
    assert command(ins[6]) == ["/bin/sh", "-c", "/bin/sh -c"]
    assert key_values(ins[2].args, "C", 1) == [("A", "1"), ("B", "two words")]


def test_legacy_env_form_and_expansion():
    assert key_values("GREETING hello there", "C", 1) == [("GREETING", "hello there")]
    assert expand("${HOME}/x:$USER:${MISSING:-fallback}", {"HOME": "/root", "USER": "app"}) == "/root/x:app:fallback"


@pytest.mark.parametrize("text,message", [
    ("FROM a\nSHELL [\"/bin/bash\"]\n", "SHELL is not supported"),
    ("FROM a\nONBUILD RUN x\n", "ONBUILD is not supported"),
    ("FROM a\nFROM b\n", "exactly one FROM"),
    ("RUN x\n", "first instruction must be FROM"),
    ("FROM a\nCOPY --from=builder /x /y\n", "multi-stage"),
    ("FROM a\nENV\n", "needs an argument"),
])
def test_refusals_name_the_line_and_the_way_out(text, message):
    with pytest.raises(BuildError, match=message):
        parse(text)


def test_copy_needs_two_parts_and_no_urls():
    ins = parse("FROM a\nCOPY onlyone\nADD https://example.invalid/x /x\n")
    with pytest.raises(BuildError, match="source and a destination"):
        sources_and_dest(ins[1], "Containerfile")
    with pytest.raises(BuildError, match="URL is not supported"):
        sources_and_dest(ins[2], "Containerfile")
