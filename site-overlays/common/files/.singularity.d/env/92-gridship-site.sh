# gridship site overlay: Apptainer sources /.singularity.d/env/*.sh for run,
# exec and shell (after 90-environment.sh, the image's ENV), but never
# /etc/profile.d: source the site's snippets here too. POSIX sh.
for _gs_f in /etc/profile.d/gridship-site-*.sh; do
    if [ -r "$_gs_f" ]; then . "$_gs_f"; fi
done
unset _gs_f
