# gridship site overlay: grid security and CVMFS locations. POSIX sh.
# The image carries no CA certificates, VOMS LSC files or vomses: the site
# provides them at run time, bind-mounted from the host (/etc/grid-security,
# /etc/vomses) or from CVMFS (/cvmfs/grid.cern.ch/etc/grid-security). When the
# usual place is empty and CVMFS has them, point the variables at CVMFS.
_gs_cvmfs=/cvmfs/grid.cern.ch/etc/grid-security
_gs_empty() { [ -z "$(ls -A "$1" 2>/dev/null)" ]; }
if [ "${X509_CERT_DIR:-/etc/grid-security/certificates}" = /etc/grid-security/certificates ] &&
    _gs_empty /etc/grid-security/certificates && [ -d "$_gs_cvmfs/certificates" ]; then
    export X509_CERT_DIR="$_gs_cvmfs/certificates"
fi
if [ "${X509_VOMS_DIR:-/etc/grid-security/vomsdir}" = /etc/grid-security/vomsdir ] &&
    _gs_empty /etc/grid-security/vomsdir && [ -d "$_gs_cvmfs/vomsdir" ]; then
    export X509_VOMS_DIR="$_gs_cvmfs/vomsdir"
fi
if [ "${VOMS_USERCONF:-/etc/vomses}" = /etc/vomses ] &&
    _gs_empty /etc/vomses && [ -e "$_gs_cvmfs/vomses" ]; then
    export VOMS_USERCONF="$_gs_cvmfs/vomses"
fi
unset _gs_cvmfs
unset -f _gs_empty
