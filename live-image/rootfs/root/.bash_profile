# rescueui live image: root's login shell. On tty1 and ttyS0 start the app once per boot.
[ -f ~/.bashrc ] && . ~/.bashrc
case "$(tty)" in
/dev/tty1 | /dev/ttyS0) /usr/local/bin/rescueui-console --login ;;
*) echo "rescueui live system. Type 'rescueui' for the app (Alt+F1: the app on tty1)." ;;
esac
