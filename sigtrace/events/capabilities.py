"""What a recording can contain, written to meta.json as "capabilities".

The report decides from these (never from the backend's name) whether a verdict is
decidable: a verdict whose signature needs evidence the recording cannot hold is
reported as undecidable, naming the missing evidence, instead of being guessed. Which event kind
proves which is declared in kinds.py (Kind.proves); each recorder's list is derived from it.
"""
SIGNAL_SENDER = "signal_sender"        # signal_generate for every sender, with result (ignored...)
SIGNAL_DELIVERY = "signal_delivery"    # signal_deliver in the receiver, with handler
PROCESS_EXEC = "process_exec"
PROCESS_EXIT = "process_exit"          # exits with code / fatal signal
TCP_STATES = "tcp_states"              # every TCP state transition, LISTEN closes included
KERNEL_RESETS = "kernel_resets"        # RSTs the kernel sends by itself (SYN to a closed port) and receives
SOCKET_CALLS = "socket_calls"          # close/shutdown/connect/accept as the traced processes call them

ALL = (SIGNAL_SENDER, SIGNAL_DELIVERY, PROCESS_EXEC, PROCESS_EXIT, TCP_STATES, KERNEL_RESETS, SOCKET_CALLS)
