# gridship test fixture: gridship-fixture/debian:bookworm
#
# Built by ci/fixtures with the classic builder (DOCKER_BUILDKIT=0, --network none),
# so every RUN below is one layer made by the engine's overlay2 driver: whiteouts,
# opaque directories and copied-up hardlinks are real engine output, not hand-made tars.
# Tests rely on the effects listed per layer; change them together with tests/.
#
# Base: gridship-fixture/debian-base:bookworm, imported from a debootstrap
# (minbase, --include=openssh-server,python3,libcap2-bin) rootfs tarball whose entries
# are named "./etc/...": tar names with a "./" prefix, as in debootstrap-made images.
ARG BASE=gridship-fixture/debian-base:bookworm
FROM ${BASE}

LABEL org.opencontainers.image.title="gridship test fixture: Debian bookworm" \
      org.opencontainers.image.description="debootstrap minbase + openssh-server + python3, with planted whiteouts, opaque dirs, hardlinks and a file capability" \
      org.gridship.fixture.name="debian"
ENV GRIDSHIP_FIXTURE=debian \
    LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Layer A: content that later layers replace.
#   /opt/x/{old-1,sub/old-2}      -> replaced wholesale in layer C (opaque dir)
#   /opt/links/orig == link (v1)  -> one inode, two names; layer D rewrites orig only
RUN set -eux; \
    mkdir -p /opt/x/sub; \
    echo old-1 > /opt/x/old-1; \
    echo old-2 > /opt/x/sub/old-2; \
    mkdir -p /opt/links; \
    echo v1 > /opt/links/orig; \
    ln /opt/links/orig /opt/links/link

# Layer B: whiteouts for a file and a directory of the base.
#   etc/.wh.motd, etc/.wh.update-motd.d
RUN set -eux; \
    test -f /etc/motd; test -d /etc/update-motd.d; \
    rm -f /etc/motd; \
    rm -rf /etc/update-motd.d

# Layer C: opaque directories (entries "opt/x/.wh..wh..opq", "etc/skel/.wh..wh..opq").
#   /opt/x     had files from layer A, now only /opt/x/new
#   /etc/skel  had .bashrc/.profile/.bash_logout from the base, now only .profile (new content)
RUN set -eux; \
    rm -rf /opt/x && mkdir /opt/x && echo new > /opt/x/new; \
    rm -rf /etc/skel && mkdir /etc/skel && echo '# gridship fixture skel' > /etc/skel/.profile

# Layer D: hardlinks across layers.
#   ln to a base file: overlayfs copies /usr/bin/python3.11 up, so this layer carries
#   usr/bin/python3.11 (regular file) and usr/local/bin/py3-hardlink (hardlink to it).
#   Rewriting /opt/links/orig breaks the layer-A link: final tree has orig=v2, link=v1.
RUN set -eux; \
    ln /usr/bin/python3.11 /usr/local/bin/py3-hardlink; \
    echo v2 > /opt/links/orig

# Layer E: a file with a capability (security.capability xattr: cap_net_raw+ep) and the
# entrypoint script. setcap comes from libcap2-bin; without it the same v2 xattr is
# written with python3; the build log says which.
RUN set -eux; \
    cp /usr/bin/sleep /usr/local/bin/gridship-netraw; \
    if command -v setcap >/dev/null; then \
        setcap cap_net_raw+ep /usr/local/bin/gridship-netraw; \
        echo "gridship-fixture: capability set with setcap"; \
    else \
        python3 -c 'import os, struct; os.setxattr("/usr/local/bin/gridship-netraw", "security.capability", struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0))'; \
        echo "gridship-fixture: setcap missing, capability xattr written with python3"; \
    fi; \
    printf '#!/bin/sh\nset -e\nexec "$@"\n' > /usr/local/bin/gridship-entrypoint; \
    chmod 0755 /usr/local/bin/gridship-entrypoint

WORKDIR /work
ENTRYPOINT ["/usr/local/bin/gridship-entrypoint"]
CMD ["/bin/bash"]
