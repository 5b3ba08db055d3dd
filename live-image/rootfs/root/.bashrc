PS1='rescueui:\w\$ '
alias ll='ls -l'
