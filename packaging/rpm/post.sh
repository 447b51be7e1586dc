# kvvm (rpm %post): enable and start the service on a new install ($1 = 1), restart it on an upgrade ($1 = 2).
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    systemctl enable --now kvvm.service >/dev/null 2>&1 || :
else
    systemctl try-restart kvvm.service >/dev/null 2>&1 || :
fi
