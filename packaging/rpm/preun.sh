# kvvm (rpm %preun): on removal ($1 = 0), stop and disable the service. Installed certificates stay.
if [ "$1" -eq 0 ]; then
    systemctl disable --now kvvm.service >/dev/null 2>&1 || :
fi
