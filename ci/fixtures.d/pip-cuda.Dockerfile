# gridship test fixture: gridship-fixture/pip-cuda:1
#
# The Debian fixture plus one layer: /opt/venv, a venv as `pip install torch`
# (2.15.0, CUDA 13.2 wheels from PyPI) leaves it, at small scale
# (ci/fixtures.d/pip-cuda-venv lays it out on the host from real wheels).
# Built by ci/fixtures with the classic builder, no network.
ARG BASE=gridship-fixture/debian:bookworm
FROM ${BASE}

LABEL org.gridship.fixture.name="pip-cuda"
ENV GRIDSHIP_FIXTURE=pip-cuda \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

COPY venv /opt/venv

# The image's own python reads the venv as Python does: the report is in the build log.
RUN ["/opt/venv/bin/python", "-c", "import importlib.metadata as m, torch.version as v; print('gridship-fixture: ' + ', '.join(f'{d.name} {d.version}' for d in sorted(m.distributions(), key=lambda d: d.name)) + f'; torch.version.cuda {v.cuda}')"]
